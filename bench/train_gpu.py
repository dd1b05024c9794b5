"""Training on a GPU: the real loop (``train_worker``) with AMP, NCCL and Partial FC, plus resume on the GPU.

Runs where CUDA is present (a lent GPU machine; skipped with a message elsewhere). A packed set of
``--classes`` identities (one aligned face each, the demo's packed faces reused) makes the head as wide as a
mid-size dataset; ``train_worker`` runs in one process with an NCCL process group, as one Ray worker would.
Measures steady samples/s per precision and backbone (first logging window excluded), checks that a
checkpoint written on the GPU resumes there, and that a GPU fp32 forward matches the CPU one.
Writes ``reports/bench/train_gpu.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from components.models import get_model
from components.recordio.dataset import FaceRecordDataset
from components.recordio.format import unpack_header
from components.recordio.insightface import write_face_dataset
from components.training.config import TrainConfig
from components.training.loop import train_worker
from components.training.sessions import LocalSession


def write_wide_dataset(root: Path, faces_from: Path, classes: int) -> Path:
    """``classes`` identities of one face each, the faces taken (and reused) from an existing packed set."""
    source = FaceRecordDataset(faces_from, random_flip=False)
    faces = [unpack_header(source.reader.read(int(key)))[1] for key in source.keys]
    root.mkdir(parents=True, exist_ok=True)
    write_face_dataset(root, [(label, faces[label % len(faces)]) for label in range(classes)], classes)
    return root


def steady(history: list[dict]) -> float:
    rates = [h["samples_per_s"] for h in history[1:]] or [h["samples_per_s"] for h in history]
    return float(np.mean(rates))


def run(cfg: TrainConfig, checkpoints: Path, resume: Path | None = None, device: str = "cuda") -> dict:
    session = LocalSession(checkpoints, resume_from=resume, device=torch.device(device))
    start = time.perf_counter()
    result = train_worker(cfg, session)
    peak = 0.0
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**30
    return result | {"seconds": time.perf_counter() - start, "peak_gib": peak}


def compute_only(classes: int, steps: int = 40, batch: int = 128) -> float:
    """Samples/s of the same r50 fp16 + Partial FC step on tensors already on the GPU (no loader, no sync per
    step): the ceiling the full loop is compared with."""
    from components.heads import CombinedMarginLoss, PartialFC

    backbone = get_model("r50", 512).cuda()
    head = PartialFC(CombinedMarginLoss(64.0, 1.0, 0.5, 0.0), 512, classes, 0.1).cuda()
    optimizer = torch.optim.SGD([*backbone.parameters(), *head.parameters()], lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler("cuda")
    images = torch.rand(batch, 3, 112, 112, device="cuda") * 2 - 1
    labels = torch.randint(0, classes, (batch,), device="cuda")
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.float16):
            embeddings = backbone(images)
        scaler.scale(head(embeddings, labels)).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--faces", type=Path, default=Path("data/packed"), help="packed faces to reuse")
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--out", type=Path, default=Path("reports/bench/train_gpu.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return
    torch.backends.cudnn.benchmark = True
    work = Path(tempfile.mkdtemp())
    data = write_wide_dataset(work / "packed", args.faces, args.classes)
    dist.init_process_group("nccl", init_method=f"file://{work}/init", rank=0, world_size=1)
    report: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "classes": args.classes,
                    "steps": args.steps, "runs": {}}
    loader = min(8, os.cpu_count() or 1)
    for backbone, precision, batch in (("r50", "fp16", 128), ("r50", "fp16", 256), ("r50", "bf16", 128),
                                       ("r50", "fp32", 128), ("mbf", "fp16", 256)):
        torch.cuda.reset_peak_memory_stats()
        cfg = TrainConfig(data_dir=str(data), out_dir=str(work / "out"), backbone=backbone, precision=precision,
                          batch_size=batch, max_steps=args.steps, log_every=10, checkpoint_every=10_000,
                          sample_rate=0.1, use_gpu=True, loader_workers=loader, lr=0.1, warmup_steps=5)
        ckpt = work / f"ckpt_{backbone}_{precision}"
        result = run(cfg, ckpt)
        key = f"{backbone}_{precision}_b{batch}"
        report["runs"][key] = {"samples_per_s": round(steady(result["history"]), 1),
                               "first_loss": round(result["history"][0]["loss"], 3),
                               "last_loss": round(result["history"][-1]["loss"], 3),
                               "skipped_steps": result["skipped_steps"], "peak_gpu_gib": round(result["peak_gib"], 2),
                               "seconds": round(result["seconds"], 1)}
        print(key, report["runs"][key], flush=True)
        if key == "r50_fp16_b128":  # resume the GPU checkpoint for 10 more steps, on the GPU
            last = sorted(ckpt.glob("checkpoint_*"))[-1]
            resumed = run(dataclasses.replace(cfg, max_steps=args.steps + 10), work / "resumed", last)
            report["resume"] = {"from_step": result["step"], "to_step": resumed["step"],
                                "history_points": len(resumed["history"])}
            print("resume", report["resume"], flush=True)
    report["compute_only_r50_fp16_b128"] = round(compute_only(args.classes), 1)
    print("compute only", report["compute_only_r50_fp16_b128"], flush=True)
    torch.manual_seed(0)
    model = get_model("r50", 512).train()
    x = torch.rand(64, 3, 112, 112) * 2 - 1
    model(x)  # one batch of BatchNorm statistics: an untrained net's default stats blow activations up to ~1e23
    model.eval()
    with torch.no_grad():
        cpu = torch.nn.functional.normalize(model(x[:8]))
        gpu = torch.nn.functional.normalize(model.cuda()(x[:8].cuda())).cpu()
    report["gpu_vs_cpu_fp32_min_cosine"] = float((cpu * gpu).sum(1).min())
    dist.destroy_process_group()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
