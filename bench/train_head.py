"""Partial FC head alone: step time and peak memory per worker, full softmax vs. sampling.

C = 100k and 1M classes, d = 512, batch 128 per worker, 2 gloo workers on CPU, plus one process holding
the full FC as the memory baseline. Writes ``reports/bench/train_head.json``.
"""

from __future__ import annotations

import json
import os
import resource
import tempfile
import time
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from components.heads import ArcFace, PartialFC

OUT = Path("reports/bench/train_head.json")
D, BATCH, STEPS = 512, 128, 3


def _measure(rank: int, world: int, classes: int, rate: float, init: str, out: str) -> None:
    torch.set_num_threads(max(1, os.cpu_count() // world))
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    before_mb = psutil.Process().memory_info().rss / 2**20  # torch and gloo, before any head tensor
    head = PartialFC(ArcFace(), D, classes, sample_rate=rate)
    opt = torch.optim.SGD(head.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(rank)
    times = []
    for _ in range(STEPS + 1):
        emb = torch.randn(BATCH, D, generator=gen, requires_grad=True)
        labels = torch.randint(0, classes, (BATCH,), generator=gen)
        start = time.perf_counter()
        loss = head(emb, labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out, f"{rank}.json").write_text(json.dumps({"step_s": sum(times[1:]) / STEPS, "peak_rss_mb": peak_mb,
                                                     "head_peak_mb": peak_mb - before_mb}))
    if world > 1:
        dist.destroy_process_group()


def run(world: int, classes: int, rate: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_measure, args=(world, classes, rate, f"{tmp}/init", tmp), nprocs=world)
        ranks = [json.loads(Path(tmp, f"{r}.json").read_text()) for r in range(world)]
    return {"workers": world, "classes": classes, "sample_rate": rate,
            "step_s": round(max(r["step_s"] for r in ranks), 4),
            "peak_rss_mb_per_worker": round(max(r["peak_rss_mb"] for r in ranks), 1),
            "head_peak_mb_per_worker": round(max(r["head_peak_mb"] for r in ranks), 1)}


def main() -> None:
    results = []
    for classes in (100_000, 1_000_000):
        results.append(run(1, classes, 1.0))  # single-process full FC: the memory baseline
        for rate in (1.0, 0.1):
            results.append(run(2, classes, rate))
            print(json.dumps(results[-1]), flush=True)
    summary = {}
    for classes in (100_000, 1_000_000):
        rows = {(r["workers"], r["sample_rate"]): r for r in results if r["classes"] == classes}
        summary[str(classes)] = {
            "speedup_pfc0.1_vs_full_2_workers": round(rows[(2, 1.0)]["step_s"] / rows[(2, 0.1)]["step_s"], 2),
            "head_memory_ratio_worker_vs_single_full": round(rows[(2, 1.0)]["head_peak_mb_per_worker"]
                                                             / rows[(1, 1.0)]["head_peak_mb_per_worker"], 3),
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    payload = {"cpus": os.cpu_count(), "embedding": D, "batch_per_worker": BATCH, "runs": results,
               "summary": summary, "device": "cpu"}
    OUT.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload["summary"], indent=2))


if __name__ == "__main__":
    main()
