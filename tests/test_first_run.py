"""[N] A first run as clean as the tests: the train stage run as `make demo` runs it (a child of `uv run`), with
the environment a user starts with (none of the defaults that importing faceforge set in this test process).

It builds no second environment for the Ray workers (Ray's uv hook would, under `uv run`), prints no Python
traceback, starts no placement-group cleaner (whose thread printed one when the instance shut down), and its
local Ray instance (GCS, raylet, Ray Train's actors, the training workers and their data-loader processes)
listens on loopback only."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.servers import server_env
from tests.training_data import write_tiny_faces

REPO = Path(__file__).parents[1]
TRAIN = ["--set", "train.backbone=mbf", "--set", "train.init_from=null", "--set", "train.teacher=null",
         "--set", "train.degrade_fraction=0",
         "--set", "train.num_workers=2", "--set", "train.max_steps=12", "--set", "train.batch_size=4",
         "--set", "train.embedding_size=32", "--set", "train.log_every=4", "--set", "train.loader_workers=1",
         "--set", "train.bn_recalibration_samples=8"]
# what uv prints when Ray's uv hook builds the workers' environment
ENVIRONMENT_BUILT = ("Creating virtual environment", "Building faceforge", "Installed ")


def _listening(root: psutil.Process, names: set[str]) -> dict[str, set[str]]:
    """Listening TCP addresses of ``root`` and its descendants -> the processes holding them; every process's
    name goes into ``names``."""
    found: dict[str, set[str]] = {}
    for process in [root, *root.children(recursive=True)]:
        try:
            names.add(process.name())
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.setdefault(conn.laddr.ip, set()).add(process.name())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_train_under_uv_run_builds_no_environment_prints_no_traceback_and_listens_on_loopback(
        tmp_path: Path) -> None:
    uv = os.environ.get("UV") or shutil.which("uv")
    if uv is None:
        pytest.skip("uv is not installed: `make test` runs the suite under `uv run`, which this test needs")
    write_tiny_faces(tmp_path / "data" / "packed", classes=4, per_class=8)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    env = server_env()
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "train.log"
    with log.open("w") as out:
        train = subprocess.Popen([uv, "run", "--frozen", "--project", str(REPO), "faceforge", "train", *TRAIN],
                                 cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
        listening: dict[str, set[str]] = {}
        processes: set[str] = set()
        deadline = time.monotonic() + 540
        while train.poll() is None and time.monotonic() < deadline:
            try:
                for ip, names in _listening(psutil.Process(train.pid), processes).items():
                    listening.setdefault(ip, set()).update(names)
            except psutil.NoSuchProcess:
                break
            time.sleep(1)
        train.wait(timeout=60)
    output = log.read_text()
    assert train.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output
    assert not [line for line in output.splitlines() if line.strip().startswith(ENVIRONMENT_BUILT)], output
    assert listening, "no listening socket seen: the probe did not see the Ray instance"
    exposed = {ip: names for ip, names in listening.items() if not _loopback(ip)}
    assert not exposed, f"listening beyond loopback: {exposed}"
    # Ray Train ran (its controller and workers), without the placement-group cleaner a local run does not need
    assert {"ray::TrainController", "ray::RayTrainWorker"} <= processes, processes
    assert not [name for name in processes if "PlacementGroupCleaner" in name], processes


def test_faceforge_sets_its_environment_defaults_itself_and_a_users_value_wins() -> None:
    """What the CLI process has once it started, from the user's environment alone (no test defaults)."""
    import json
    import sys

    names = ["RAY_ENABLE_UV_RUN_RUNTIME_ENV", "RAY_USAGE_STATS_ENABLED", "GX_ANALYTICS_ENABLED",
             "PREFECT_SERVER_ANALYTICS_ENABLED", "MLFLOW_DISABLE_TELEMETRY", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"]
    code = f"import json, os, faceforge.cli; print(json.dumps({{k: os.environ.get(k) for k in {names!r}}}))"

    def started_with(**env: str) -> dict[str, str | None]:
        user = {k: v for k, v in server_env().items() if k not in names and k != "RAY_ADDRESS"} | env
        done = subprocess.run([sys.executable, "-c", code], env=user, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    assert started_with() == {"RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_USAGE_STATS_ENABLED": "0",
                              "GX_ANALYTICS_ENABLED": "False", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                              "MLFLOW_DISABLE_TELEMETRY": "true", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    mine = started_with(RAY_USAGE_STATS_ENABLED="1", PREFECT_SERVER_ANALYTICS_ENABLED="true",
                        RAY_ADDRESS="ray-head:6379")
    assert mine["RAY_USAGE_STATS_ENABLED"] == "1" and mine["PREFECT_SERVER_ANALYTICS_ENABLED"] == "true"
    assert mine["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] is None  # a cluster: the node's own address
