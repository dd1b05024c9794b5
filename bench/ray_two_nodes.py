"""`faceforge train` on a two-node Ray cluster vs. one node, and the time a lost node costs a run.

Real raylets on 127.0.0.1 (`ray start`, token authentication as a team runs it), the demo's packed faces,
2 workers of 1 CPU each: on the two-node cluster one per node (gloo between the nodes over TCP), on the
one-node cluster (one raylet with 2 CPUs) both on it. Both clusters share this machine's cores, so the
comparison measures what going multi-node costs (process placement, collectives between raylets), not more
hardware. Then the two-node run again with the second node killed right after the first checkpoint and a
third node joining: the extra wall time over the uninterrupted run is what the lost node cost. Whole CLI
processes are timed, as a user runs them, with params.yaml's recipe (its start and teacher are copied along).
Writes ``reports/bench/ray_two_nodes.json``. Run after ``make demo``.
"""

from __future__ import annotations

import json
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from ray._common.utils import get_ray_address_file

from components.serving.triton_server import free_port
from tests.servers import alive_ray_nodes, ray_node, server_env, wait_for

OUT = Path("reports/bench/ray_two_nodes.json")
STEPS, CHECKPOINT_EVERY = 16, 4
TRAIN = ["--set", "train.num_workers=2", "--set", f"train.max_steps={STEPS}", "--set", "train.batch_size=16",
         "--set", f"train.checkpoint_every={CHECKPOINT_EVERY}", "--set", "train.log_every=2",
         "--set", "train.max_failures=3", "--set", "train.loader_workers=1"]
RATE = re.compile(r"step (\d+)/\d+ loss \S+ lr \S+ ([\d.]+) samples/s")


def _rate(output: str) -> float:
    """Mean samples/s of the logging windows after the first (warm-up)."""
    rates = [float(m.group(2)) for m in RATE.finditer(output)]
    return statistics.mean(rates[1:] or rates)


def _train(project: Path, env: dict[str, str], storage: Path) -> tuple[float, str]:
    started = time.monotonic()
    done = subprocess.run([str(Path(sys.executable).parent / "faceforge"), "train", *TRAIN,
                           "--set", f"train.storage_path={storage}"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(done.stdout[-3000:] + done.stderr[-3000:])
    return time.monotonic() - started, done.stdout + done.stderr


@contextmanager
def loopback_cluster(cpus: list[int], env: dict[str, str], logs: Path) -> Iterator[tuple[str, list]]:
    """A Ray cluster of one raylet per entry of ``cpus`` (its CPU count) on 127.0.0.1: (address, nodes).

    The nodes are stopped by their process ids, not ``ray stop``; Ray's address file, which ``ray start --head``
    rewrites, is restored (or later local runs' actors would look for this dead cluster)."""
    address_file = Path(get_ray_address_file(None))
    previous = address_file.read_bytes() if address_file.exists() else None
    port = free_port()
    address = f"127.0.0.1:{port}"
    nodes = [ray_node("head", ["--head", f"--port={port}", "--include-dashboard=false"], env, logs,
                      lambda: alive_ray_nodes(address, env) >= 1, cpus[0])]
    for i, n in enumerate(cpus[1:], start=2):
        nodes.append(ray_node(f"node-{i}", [f"--address={address}"], env, logs,
                              lambda k=i: alive_ray_nodes(address, env) >= k, n))
    try:
        for node in nodes:
            node.start()
        yield address, nodes
    finally:
        for node in reversed(nodes):
            node.stop()
        if previous is None:
            address_file.unlink(missing_ok=True)
        else:
            address_file.write_bytes(previous)


def _lose_a_node(project: Path, env: dict[str, str], address: str, nodes: list, clean_seconds: float) -> dict:
    """The two-node run again, node 2 killed right after the first checkpoint and node 3 joining."""
    spare = ray_node("node-3", [f"--address={address}"], env, project / "two_nodes",
                     lambda: alive_ray_nodes(address, env) >= 2)
    nodes.append(spare)  # stopped with the others
    storage = project / "two_nodes" / "ray-faulty"
    started = time.monotonic()
    run = subprocess.Popen([str(Path(sys.executable).parent / "faceforge"), "train", *TRAIN,
                            "--set", f"train.storage_path={storage}"], cwd=project, env=env | {"RAY_ADDRESS": address},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: any(storage.rglob("meta.json")), 600, "the first checkpoint", 0.2)
    nodes[1].kill()
    wait_for(lambda: alive_ray_nodes(address, env) == 1, 120, "the lost node noticed", 1)
    spare.start()
    if run.wait(timeout=900) != 0:
        raise RuntimeError("the run with a lost node failed")
    faulty = time.monotonic() - started
    return {"seconds": round(faulty, 1), "lost_s": round(faulty - clean_seconds, 1),
            "killed_after_checkpoint_step": CHECKPOINT_EVERY}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        train = yaml.safe_load(Path("params.yaml").read_text())["train"]
        for needed in {"data/packed", train["init_from"], train["teacher"]} - {None}:  # what params.yaml trains from
            copy = shutil.copytree if Path(needed).is_dir() else shutil.copy
            (project / needed).parent.mkdir(parents=True, exist_ok=True)
            copy(Path(needed), project / needed)
        shutil.copy("params.yaml", project / "params.yaml")
        (project / "reports").mkdir()
        env = server_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        env.pop("RAY_ADDRESS", None)
        report: dict = {"steps": STEPS, "workers": 2, "batch_per_worker": 16, "backbone": train["backbone"],
                        "init_from": train["init_from"], "teacher": train["teacher"]}
        for label, cpus in (("one_node", [2]), ("two_nodes", [1, 1])):
            with loopback_cluster(cpus, env, project / label) as (address, nodes):
                seconds, output = _train(project, env | {"RAY_ADDRESS": address}, project / label / "ray")
                report[label] = {"seconds": round(seconds, 1), "samples_per_s": round(_rate(output), 2)}
                if label == "two_nodes":  # again, losing node 2 after the first checkpoint; node 3 joins
                    report["lost_node"] = _lose_a_node(project, env, address, nodes, seconds)
        report["two_nodes_vs_one"] = round(report["two_nodes"]["samples_per_s"] / report["one_node"]["samples_per_s"],
                                           3)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
