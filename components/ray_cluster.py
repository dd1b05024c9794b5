"""The Ray cluster that training and preprocessing run on: how to join it, and what every node must see.

Without ``RAY_ADDRESS``, always a fresh local instance (never a cluster that a dead ``ray start`` left in
Ray's address file: joining that retried for minutes). With it, a cluster that does not answer fails within
seconds, naming the address. On a multi-node cluster, a folder the workers read or write must be visible on
every node (NFS and the like), as must a file they read (a start model), or the work is refused before it
starts, naming the nodes that cannot see it.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from components import env_defaults

CONNECT_TIMEOUT_S = 20


class ClusterUnreachable(ConnectionError):
    """``RAY_ADDRESS`` names a cluster that does not answer."""


class PathNotShared(ValueError):
    """A folder or file the work needs is not visible on some node of the cluster."""


def connect(address: str | None = None) -> None:
    """Without ``RAY_ADDRESS``: always a fresh local instance (never a cluster a dead ``ray start`` left in
    Ray's address file). With it: fail within seconds, naming the address, when nothing answers there."""
    address = address if address is not None else os.environ.get("RAY_ADDRESS")
    # Ray's uv hook is off from the moment `components` is imported (components/env_defaults.py).
    # Progress is the loop's own print, once per log_every: plain stdout forwarded once (Ray Train's print
    # patch would log every line a second time); Ray's own logs only at ERROR (and ray_runner's RunConfig).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if not address:
        # Node preemption is a cloud cluster's event; locally its watcher only logs an error line. Ray Train's
        # metrics feed a dashboard that a local run does not start, and its health check of the workers
        # every 2 s takes CPU from the training workers on a small machine (bench/train_e2e.py).
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "10")
        # Ray starts its workers at niceness 15, so that on a cluster node its own daemons keep priority; on a
        # user's machine the workers are the job, and at 15 they yield to every other process there (and so
        # do their data-loader processes), which the plain-process runs of bench/train_e2e.py never do.
        os.environ.setdefault("RAY_worker_niceness", "0")
    import ray

    if ray.is_initialized():
        return
    if address and address not in ("auto", "local"):
        host_port = urlparse(address if "://" in address else f"ray://{address}").netloc
        host, _, port = host_port.rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
        except (OSError, ValueError) as exc:
            raise ClusterUnreachable(f"the Ray cluster at RAY_ADDRESS={address} is unreachable ({exc})") from None
    # Every process of the job logs at ERROR: with the dashboard off, Ray Train's PlacementGroupCleaner warns
    # every few seconds that the State API is unavailable (it watches the run's controller through it).
    if address and address != "local" and "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" in env_defaults.applied:
        # this process started in single-machine mode (its node IP is 127.0.0.1): it cannot join a cluster
        raise ValueError(f"RAY_ADDRESS={address} was set after this process started without it: "
                         "set RAY_ADDRESS before starting faceforge")
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=True, logging_level="ERROR",
             logging_config=ray.LoggingConfig(encoding="TEXT", log_level="ERROR"))


def check_shared(paths: Sequence[str | Path], setting: str) -> None:
    """Every folder and file here must be visible from a task on every other node; else refuse, naming
    ``setting`` (the params key to change) and the nodes that cannot see it. S3 URLs are shared.

    A folder is probed with a marker written into it (so an empty one on each node's own disk does not pass);
    a file (a start model, the teacher's targets) by its size, which a node must see the same: the workers read
    these by path, and a node without them fails only minutes later, inside a worker."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0]
    local = [Path(f).resolve() for f in paths if not str(f).startswith("s3://")]
    if len(nodes) < 2 or not local:
        return

    @ray.remote(num_cpus=0)
    def sizes(probes: list[str]) -> list[int]:
        return [os.path.getsize(p) if os.path.isfile(p) else -1 for p in probes]

    probes = []  # what each node must see: each file itself, a marker written into each folder
    for path in local:
        if path.is_file():
            probes.append(path)
        else:
            path.mkdir(parents=True, exist_ok=True)
            probes.append(path / f".faceforge-shared-{uuid.uuid4().hex}")
            probes[-1].write_text("")
    expected = [p.stat().st_size for p in probes]
    try:
        seen = ray.get([sizes.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                        .remote([str(p) for p in probes]) for n in nodes])
    finally:
        for path, probe in zip(local, probes, strict=True):
            if probe != path:  # a marker
                probe.unlink(missing_ok=True)
    for i, path in enumerate(local):
        blind = [n["NodeManagerAddress"] for n, got in zip(nodes, seen, strict=True) if got[i] != expected[i]]
        if blind:
            kind = "file" if probes[i] == path else "folder"
            raise PathNotShared(f"{setting} {path} is a {kind} that nodes {blind} of the {len(nodes)}-node "
                                "cluster cannot see: put it on a shared mount (or S3 where s3:// is accepted)")
