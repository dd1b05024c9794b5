"""End-to-end training throughput on CPU: Ray Train (2 workers) vs. the same loop in plain processes.

Both launchers run ``components.training.loop.train_worker`` on 2 gloo workers over the demo's packed
faces, 16 steps logged every 4; samples/s is the mean of the logging windows after the first (warm-up:
lazy imports, allocator, first gloo rendezvous excluded). Each launcher runs three times, alternating, and
the overhead is the median over the (Ray, plain) pairs: one pair's figure moves by several percent on a
2-core machine. Every run is a fresh process, as ``faceforge train`` is: a local Ray left running by an
earlier run would take CPU from the next run (and its wall time, start-up and shutdown included, is
recorded too). Writes ``reports/bench/train_e2e.json``. Run after ``make demo``.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from components.training.config import TrainConfig
from components.training.loop import train_worker
from components.training.ray_runner import run_on_ray
from components.training.sessions import LocalSession

OUT = Path("reports/bench/train_e2e.json")
DATA = Path("data/packed")
STEPS, PAIRS = 16, 3  # steps per run (logged every 4, the first window is warm-up); Ray/plain pairs per backbone


def _steady(history: list[dict]) -> float:
    rates = [h["samples_per_s"] for h in history[1:]] or [h["samples_per_s"] for h in history]
    return sum(rates) / len(rates)


def _plain_worker(rank: int, cfg: TrainConfig, tmp: str) -> None:
    # Ray gives each worker its share of the cores (OMP_NUM_THREADS); do the same, or the comparison
    # measures thread oversubscription instead of Ray's overhead.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.num_workers))
    dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=rank, world_size=cfg.num_workers)
    result = train_worker(cfg, LocalSession(Path(tmp) / "ckpt"))
    if rank == 0:
        Path(tmp, "history.json").write_text(json.dumps(result["history"]))
    dist.destroy_process_group()


def _rates(backbone: str, launcher: str) -> float:
    """Steady samples/s of one fresh run of ``launcher`` ("ray" or "plain")."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(data_dir=str(DATA.resolve()), out_dir=tmp, backbone=backbone, batch_size=32,
                          max_steps=STEPS, log_every=4, checkpoint_every=1000, num_workers=2, sample_rate=0.5,
                          loader_workers=1, lr=0.05)
        if launcher == "ray":
            return _steady(run_on_ray(cfg, Path(tmp) / "ray", f"bench_{backbone}").metrics["history"])
        mp.spawn(_plain_worker, args=(cfg, tmp), nprocs=cfg.num_workers)
        return _steady(json.loads(Path(tmp, "history.json").read_text()))


def _fresh_run(backbone: str, launcher: str) -> tuple[float, float]:
    """(steady samples/s, wall seconds of the whole process) of one run in a process of its own."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "bench.train_e2e", launcher, backbone], capture_output=True,
                          text=True, check=True)
    return round(float(done.stdout.strip().splitlines()[-1]), 2), round(time.perf_counter() - start, 1)


def main() -> None:
    results = {}
    for backbone in ("mbf", "r18"):
        # Alternating order (ray, plain, plain, ray, ...) so that a machine drifting during the measurement
        # weighs on both launchers alike; the overhead is the median over the pairs.
        runs: dict[str, list[float]] = {"ray": [], "plain": []}
        walls: dict[str, list[float]] = {"ray": [], "plain": []}
        for pair in range(PAIRS):
            for launcher in (("ray", "plain") if pair % 2 == 0 else ("plain", "ray")):
                rate, wall = _fresh_run(backbone, launcher)
                runs[launcher].append(rate)
                walls[launcher].append(wall)
        overheads = [plain / ray - 1 for ray, plain in zip(runs["ray"], runs["plain"], strict=True)]
        results[backbone] = {"ray_samples_per_s": runs["ray"], "plain_samples_per_s": runs["plain"],
                             "ray_overhead_fraction_per_pair": [round(o, 4) for o in overheads],
                             "ray_overhead_fraction_median": round(statistics.median(overheads), 4),
                             "ray_process_wall_s": walls["ray"], "plain_process_wall_s": walls["plain"]}
        print(backbone, results[backbone], flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"device": "cpu", "cpus": os.cpu_count(), "workers": 2, "batch_per_worker": 32,
                               "steps": STEPS, "pairs": PAIRS, "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3:  # one run: launcher, backbone
        print(_rates(sys.argv[2], sys.argv[1]))
    else:
        main()
