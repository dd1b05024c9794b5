"""[H] Training on a real two-node Ray cluster on 127.0.0.1 (two raylets: `ray start --head` + `ray start
--address`), checkpoints on S3 (moto's server), token authentication on as a team runs it (`RAY_AUTH_TOKEN`
shared by every node and the driver). Mid-run the second node is killed and a new node joins (Ray Train's
FailureConfig restarts the workers from the S3 checkpoint); then the driver itself is killed (`kill -9` of its
process group, as a reboot or an OOM would) and `faceforge train` run again resumes the same run from its last
checkpoint by itself. The weights equal those of an uninterrupted run (CPU, same seed). The run starts from a
model file and distils a teacher, as params.yaml's recipe does: the files the workers read are checked on every
node too (components/ray_cluster.check_shared)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from ray._common.utils import get_ray_address_file

from components.serving.triton_server import free_port
from tests.servers import alive_ray_nodes, ray_node, server_env, wait_for
from tests.training_data import write_tiny_faces

REPO = Path(__file__).parents[1]
STORAGE = "s3://models/ray"
# from scratch where the start does not matter (tests/test_start.py tests the start itself)
SCRATCH = ["--set", "train.backbone=mbf", "--set", "train.init_from=null", "--set", "train.teacher=null",
           "--set", "train.degrade_fraction=0"]
# On the cluster, as params.yaml's recipe trains: from a start model file, distilling a teacher, whose targets
# file the workers on every node read (a small mbf here, written by _start_and_teacher, in place of SFace)
START = ["--set", "train.backbone=mbf", "--set", "train.init_from=data/start/backbone.pth",
         "--set", "train.teacher=data/start/teacher.onnx", "--set", "train.degrade_fraction=0"]
TRAIN = [*START, "--set", "train.num_workers=2", "--set", "train.max_steps=10", "--set", "train.batch_size=4",
         "--set", "train.embedding_size=32", "--set", "train.checkpoint_every=2", "--set", "train.log_every=2",
         "--set", "train.sample_rate=0.5", "--set", "train.bn_recalibration_samples=8", "--set", "train.max_failures=3",
         "--set", "train.loader_workers=0", "--set", f"train.storage_path={STORAGE}"]


def _latest_step(s3: Any) -> int:
    """Step of the newest complete checkpoint in the run's storage (rank 0's meta.json and both head shards)."""
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix="ray/").get("Contents", [])]
    folders = [k.rsplit("/", 1)[0] for k in keys if k.endswith("/meta.json")]
    complete = [f for f in folders if all(f"{f}/head_rank{r}.pt" in keys for r in (0, 1))]
    return max((json.loads(s3.get_object(Bucket="models", Key=f"{f}/meta.json")["Body"].read())["step"]
                for f in complete), default=0)


def _start_and_teacher(folder: Path) -> None:
    """A 32-d mbf as a start model (backbone.pth) and, exported, as the teacher (teacher.onnx)."""
    from components.export import export_onnx
    from components.models import get_model

    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = get_model("mbf", 32).eval()
    torch.save(model.state_dict(), folder / "backbone.pth")
    export_onnx(model, folder / "teacher.onnx", simplify=False)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_two_node_cluster_loses_a_node_and_finishes_from_the_s3_checkpoint(tmp_path: Path, s3: Any) -> None:
    write_tiny_faces(tmp_path / "data" / "packed", classes=6, per_class=8)
    _start_and_teacher(tmp_path / "data" / "start")
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "reports").mkdir()
    port = free_port()
    address = f"127.0.0.1:{port}"
    s3_env = {k: os.environ[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                         "AWS_DEFAULT_REGION")}
    env = server_env(**s3_env, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env.pop("RAY_ADDRESS", None)
    logs = tmp_path / "logs"
    head = ray_node("ray-head", ["--head", f"--port={port}", "--include-dashboard=false"], env, logs,
                    lambda: alive_ray_nodes(address, env) >= 1)
    second = ray_node("ray-node-2", [f"--address={address}"], env, logs, lambda: alive_ray_nodes(address, env) >= 2)
    third = ray_node("ray-node-3", [f"--address={address}"], env, logs, lambda: alive_ray_nodes(address, env) >= 2)
    faceforge = [str(Path(sys.executable).parent / "faceforge"), "train", *TRAIN]
    driver_env = env | {"RAY_ADDRESS": address}
    # `ray start --head` records its address in Ray's address file, which `ray stop` would remove; the nodes are
    # stopped by their ids instead, so the file is restored here, or later local runs' Ray Train actors would
    # look for this dead cluster (a State API timeout traceback from Ray Train's PlacementGroupCleaner).
    address_file = Path(get_ray_address_file(None))
    previous = address_file.read_bytes() if address_file.exists() else None
    try:
        head.start()
        second.start()
        started = time.monotonic()
        clean = subprocess.run(faceforge, cwd=tmp_path, env=driver_env, capture_output=True, text=True, timeout=600)
        assert clean.returncode == 0, clean.stdout[-3000:] + clean.stderr[-3000:]
        clean_seconds = time.monotonic() - started
        report = json.loads((tmp_path / "reports" / "train.json").read_text())
        assert report["start"]["init_from"] == "data/start/backbone.pth" and report["freeze_batchnorm"]
        assert report["teacher"]["teacher"] == "data/start/teacher.onnx"
        reference = torch.load(tmp_path / "data" / "train" / "backbone.pth")
        assert not s3.list_objects_v2(Bucket="models", Prefix="ray/train-").get("KeyCount")  # finished: freed

        # Again: the second node dies once the first checkpoint is safely on S3, a new node joins ...
        started = time.monotonic()
        with (tmp_path / "faulty.log").open("w") as log:
            run = subprocess.Popen(faceforge, cwd=tmp_path, env=driver_env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        wait_for(lambda: _latest_step(s3) >= 2, 300, "the first checkpoint on S3", 0.5)
        second.kill()
        wait_for(lambda: alive_ray_nodes(address, env) == 1, 120, "the cluster noticing the lost node", 2)
        third.start()
        # ... the workers restart from that checkpoint and go on; then the driver dies as well.
        wait_for(lambda: _latest_step(s3) >= 6, 300, "a checkpoint after the recovery", 0.5)
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
        lost_at = time.monotonic() - started
        resumed = subprocess.run(faceforge, cwd=tmp_path, env=driver_env, capture_output=True, text=True,
                                 timeout=600)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        faulty_seconds = time.monotonic() - started
    finally:
        for node in (third, second, head):
            node.stop()
        if previous is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_bytes(previous)
    assert "resuming training run train-" in resumed.stdout and "from its checkpoint at step" in resumed.stdout
    assert '"resumed_from_step": ' in resumed.stdout
    recovered = torch.load(tmp_path / "data" / "train" / "backbone.pth")
    for name, value in reference.items():
        torch.testing.assert_close(recovered[name], value, rtol=1e-5, atol=1e-6, msg=name)
    print(f"two-node run: uninterrupted {clean_seconds:.0f} s; with a lost node and a killed driver "
          f"{faulty_seconds:.0f} s (driver killed after {lost_at:.0f} s)")


def test_an_unreachable_ray_address_fails_fast_naming_it(tmp_path: Path) -> None:
    write_tiny_faces(tmp_path / "data" / "packed", classes=4, per_class=4)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    address = f"127.0.0.1:{free_port()}"
    done = subprocess.run([str(Path(sys.executable).parent / "faceforge"), "train", *SCRATCH,
                           "--set", "train.batch_size=4"],
                          cwd=tmp_path, env=server_env(RAY_ADDRESS=address), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 75, done.stderr
    # (a TCP check bounded by ray_runner.CONNECT_TIMEOUT_S, not Ray's own minutes of reconnect attempts)
    assert f"the Ray cluster at RAY_ADDRESS={address} is unreachable" in done.stderr


def test_local_ray_runs_in_this_environment_without_the_uv_hook() -> None:
    """Under `uv run` (make demo, make test) Ray's uv hook would build a second virtualenv for the workers on
    every run; Ray reads its switch when imported, so ``connect`` sets it before importing Ray. A local run's
    workers are not niced below the driver."""
    code = ("import os; from components.ray_cluster import connect; connect(); "
            "import ray; from ray._private import ray_constants; "
            "print(ray.get(ray.remote(lambda: os.nice(0)).remote()), ray_constants.RAY_ENABLE_UV_RUN_RUNTIME_ENV)")
    env = {k: v for k, v in server_env().items() if k not in ("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "RAY_ADDRESS")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    # ... and its workers run at the driver's niceness, not Ray's 15 for cluster nodes
    assert done.stdout.strip().splitlines()[-1] == "0 False"
