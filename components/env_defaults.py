"""Environment defaults every faceforge process sets for itself: quiet, offline-friendly, local-only.

They are environment variables because that is how Ray and Great Expectations read them, and Ray reads its
switches once, when it is first imported: so they are set when ``components`` is imported, before any module
of ours can import Ray, and the processes they start (Ray workers, servers) inherit them. A value the user has
set is never overridden. docs/architecture.md, "Environment defaults".
"""

from __future__ import annotations

import os

DEFAULTS = {
    # Under `uv run`, Ray's uv hook ships the checkout (its .venv included) to every job and builds a second
    # virtualenv for the workers; ours use this interpreter's environment on one machine and the cluster
    # image's on a cluster, whose nodes have no internet to build one (docs/ray_cluster.md).
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    # Telemetry is opt-in: these would otherwise phone home (and fail, offline) from every run.
    "RAY_USAGE_STATS_ENABLED": "0",
    "GX_ANALYTICS_ENABLED": "False",
}

# Without RAY_ADDRESS (or with "local") training and preprocessing start a Ray instance that serves this
# machine only. Ray then takes the machine's IP as the node's and listens on every interface (GCS, raylet,
# every worker's gRPC server, the agents); with its single-machine mode (made for laptops, where clusters are
# off) the node IP is 127.0.0.1 and everything listens on loopback. RAY_ADDRESS is read once, at start.
LOCAL_RAY_DEFAULTS = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}

applied: dict[str, str] = {}  # what this process set itself (not the user): child processes inherit it


def local_ray() -> bool:
    return os.environ.get("RAY_ADDRESS", "local") in ("", "local")


def apply(defaults: dict[str, str] | None = None) -> None:
    if defaults is None:
        defaults = DEFAULTS | (LOCAL_RAY_DEFAULTS if local_ray() else {})
    for name, value in defaults.items():
        if name not in os.environ:
            os.environ[name] = applied[name] = value
