"""Partial FC head alone, side by side with arcface_torch's ``PartialFC_V2``: step time and peak memory.

1M classes (and 100k), d = 512, batch 128 per worker, 2 gloo workers on CPU, SGD with momentum 0.9 and weight
decay 5e-4 as users train (arcface_torch's ``train_v2.py`` settings); each configuration in fresh processes.
faceforge runs ``PartialFC`` + ``LazySGD`` (the training stage's optimiser); arcface_torch runs its own
``PartialFC_V2`` + ``torch.optim.SGD``, imported from ``$ARCFACE_TORCH`` (a checkout of
insightface/recognition/arcface_torch, not shipped with faceforge; its ``.cuda()`` calls are made no-ops on
CPU). Without ``ARCFACE_TORCH`` only faceforge is measured. Writes ``reports/bench/train_head.json``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from bench import arcface_torch

OUT = Path("reports/bench/train_head.json")
D, BATCH, LR, MOMENTUM, WEIGHT_DECAY = 512, 128, 0.1, 0.9, 5e-4
STEPS = {1.0: 3, 0.1: 10}  # timed steps after one warm-up step; step time is their median


def _faceforge(classes: int, rate: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from components.heads import ArcFace, PartialFC
    from components.training.lazy_sgd import LazySGD

    head = PartialFC(ArcFace(), D, classes, sample_rate=rate)
    optimizer = LazySGD([head.weight], lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    head.attach_row_reader(lambda rows: optimizer.read_rows(head.weight, rows))
    return head, optimizer


def _arcface_torch(classes: int, rate: float) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    arcface_torch.make_importable(cpu=True)
    from losses import CombinedMarginLoss
    from partial_fc_v2 import PartialFC_V2

    head = PartialFC_V2(CombinedMarginLoss(64, 1.0, 0.5, 0.0), D, classes, sample_rate=rate)
    return head, torch.optim.SGD(head.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)


def _measure(rank: int, world: int, impl: str, classes: int, rate: float, init: str, out: str) -> None:
    torch.set_num_threads(max(1, os.cpu_count() // world))
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    before_mb = psutil.Process().memory_info().rss / 2**20  # torch and gloo, before any head tensor
    head, optimizer = (_faceforge if impl == "faceforge" else _arcface_torch)(classes, rate)
    gen = torch.Generator().manual_seed(rank)
    times = []
    for _ in range(STEPS[rate] + 1):
        emb = torch.randn(BATCH, D, generator=gen, requires_grad=True)
        labels = torch.randint(0, classes, (BATCH,), generator=gen)
        start = time.perf_counter()
        head(emb, labels).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    Path(out, f"{rank}.json").write_text(json.dumps({"step_s": statistics.median(times[1:]), "peak_rss_mb": peak_mb,
                                                     "head_peak_mb": peak_mb - before_mb}))
    dist.destroy_process_group()


def run(impl: str, classes: int, rate: float, world: int = 2) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_measure, args=(world, impl, classes, rate, f"{tmp}/init", tmp), nprocs=world)
        ranks = [json.loads(Path(tmp, f"{r}.json").read_text()) for r in range(world)]
    result = {"impl": impl, "workers": world, "classes": classes, "sample_rate": rate,
              "step_s": round(max(r["step_s"] for r in ranks), 4),
              "peak_rss_mb_per_worker": round(max(r["peak_rss_mb"] for r in ranks), 1),
              "head_peak_mb_per_worker": round(max(r["head_peak_mb"] for r in ranks), 1)}
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    impls = ["faceforge"] + (["arcface_torch"] if arcface_torch.available() else [])
    runs = [run(impl, classes, rate) for classes in (100_000, 1_000_000) for rate in (1.0, 0.1) for impl in impls]
    summary = {}
    for classes in (100_000, 1_000_000):
        rows = {(r["impl"], r["sample_rate"]): r for r in runs if r["classes"] == classes}
        full, sampled = rows["faceforge", 1.0]["step_s"], rows["faceforge", 0.1]["step_s"]
        ours = {"speedup_rate0.1_vs_full": round(full / sampled, 2)}
        if "arcface_torch" in impls:
            for rate in (1.0, 0.1):
                ours[f"speedup_vs_arcface_torch_rate{rate}"] = round(
                    rows["arcface_torch", rate]["step_s"] / rows["faceforge", rate]["step_s"], 2)
                ours[f"memory_vs_arcface_torch_rate{rate}"] = round(
                    rows["faceforge", rate]["head_peak_mb_per_worker"]
                    / rows["arcface_torch", rate]["head_peak_mb_per_worker"], 2)
        summary[str(classes)] = ours
    OUT.parent.mkdir(parents=True, exist_ok=True)
    payload = {"cpus": os.cpu_count(), "embedding": D, "batch_per_worker": BATCH, "timed_steps": STEPS,
               "optimizer": {"momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY}, "device": "cpu",
               "runs": runs, "summary": summary}
    OUT.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
