"""One GPU, r50 fp16, batch 128: faceforge's training step vs. arcface_torch's ``train_v2.py`` step, same process.

Both train on the same batch already on the GPU (no loader on either side), 100k classes, SGD momentum 0.9 +
weight decay 5e-4, clip 5, warmup + poly schedule, reading the loss every step as both loops do:

* faceforge: ``build_backbone`` / ``PartialFC`` / ``build_optimizer`` (``LazySGD``) / ``forward_backward`` /
  ``optimiser_step``, the functions ``train_worker`` runs; one GPU is one worker (no DDP), plus a row wrapped
  in DDP as every worker of a multi-GPU run is; ``channels_last`` and ``compile`` variants.
* arcface_torch, imported from ``$ARCFACE_TORCH`` (a checkout of insightface/recognition/arcface_torch, not
  shipped with faceforge): its ``iresnet50(fp16=True)``, DDP with ``fp16_compress_hook`` and static graph,
  ``PartialFC_V2``, ``GradScaler(growth_interval=100)``, ``PolynomialLRWarmup`` and the step of ``train_v2.py``.

samples/s over ``--steps`` timed steps after ``--warmup`` (compilation included in warmup). Writes
``reports/bench/train_gpu_vs_arcface.json`` (or ``--out``) after every measurement, so a run cut short keeps
what it measured. ``--device cpu`` is a smoke run of the same code (fp32, small sizes).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from bench import arcface_torch
from components.heads import PartialFC
from components.training.config import TrainConfig
from components.training.loop import build_backbone, build_margin, forward_backward, optimiser_step
from components.training.optim import build_optimizer, build_scheduler

LR, MOMENTUM, WEIGHT_DECAY, CLIP, WARMUP_STEPS = 0.1, 0.9, 5e-4, 5.0, 5


def _timed(step: Callable[[], None], warmup: int, steps: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def faceforge_step(cfg: TrainConfig, classes: int, images: torch.Tensor, labels: torch.Tensor,
                   device: torch.device, ddp: bool) -> Callable[[], None]:
    torch.manual_seed(0)
    backbone = build_backbone(cfg).to(device)
    if ddp:
        backbone = torch.nn.parallel.DistributedDataParallel(backbone)
    head = PartialFC(build_margin(cfg), cfg.embedding_size, classes, cfg.sample_rate).to(device)
    optimizer = build_optimizer(backbone, head, cfg)
    scheduler = build_scheduler(optimizer, cfg, 100_000)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")

    def step() -> None:
        forward_backward(backbone, head, scaler, cfg, images, labels, device)
        optimiser_step(optimizer, scaler, backbone, cfg.grad_clip)
        scheduler.step()

    return step


def arcface_torch_step(classes: int, rate: float, images: torch.Tensor, labels: torch.Tensor,
                       device: torch.device, fp16: bool) -> Callable[[], None]:
    arcface_torch.make_importable(cpu=device.type == "cpu")
    from backbones import get_model
    from losses import CombinedMarginLoss
    from lr_scheduler import PolynomialLRWarmup
    from partial_fc_v2 import PartialFC_V2
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import fp16_compress_hook

    torch.manual_seed(0)
    backbone = get_model("r50", dropout=0.0, fp16=fp16, num_features=512).to(device)
    backbone = torch.nn.parallel.DistributedDataParallel(
        module=backbone, broadcast_buffers=False, device_ids=[0] if device.type == "cuda" else None,
        bucket_cap_mb=16, find_unused_parameters=True)
    if device.type == "cuda":
        backbone.register_comm_hook(None, fp16_compress_hook)
    backbone.train()
    backbone._set_static_graph()
    head = PartialFC_V2(CombinedMarginLoss(64, 1.0, 0.5, 0.0, 0), 512, classes, rate, False).train().to(device)
    opt = torch.optim.SGD(params=[{"params": backbone.parameters()}, {"params": head.parameters()}],
                          lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scheduler = PolynomialLRWarmup(optimizer=opt, warmup_iters=WARMUP_STEPS, total_iters=100_000)
    amp = torch.amp.GradScaler(device.type, growth_interval=100, enabled=fp16)

    def step() -> None:
        loss = head(backbone(images), labels.clone())
        amp.scale(loss).backward()
        amp.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(backbone.parameters(), CLIP)
        amp.step(opt)
        amp.update()
        opt.zero_grad()
        scheduler.step()
        loss.item()  # train_v2.py's AverageMeter reads it every step

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--classes", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--backbone", default="r50")
    parser.add_argument("--out", type=Path, default=Path("reports/bench/train_gpu_vs_arcface.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return
    gpu = device.type == "cuda"
    torch.backends.cudnn.benchmark = gpu
    init = Path(tempfile.mkdtemp()) / "init"
    dist.init_process_group("nccl" if gpu else "gloo", init_method=f"file://{init}", rank=0, world_size=1)
    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(args.batch, 3, 112, 112, generator=gen) * 2 - 1).to(device)
    labels = torch.randint(0, args.classes, (args.batch,), generator=gen).to(device)
    report: dict = {"device": torch.cuda.get_device_name(0) if gpu else "cpu", "torch": torch.__version__,
                    "backbone": args.backbone, "precision": "fp16" if gpu else "fp32", "batch": args.batch,
                    "classes": args.classes, "steps": args.steps, "warmup": args.warmup, "samples_per_s": {}}
    runs: list[tuple[str, Callable[[], Callable[[], None]]]] = []
    for rate in (0.1, 1.0):
        base = TrainConfig(data_dir="-", out_dir="-", backbone=args.backbone, precision=report["precision"],
                           sample_rate=rate, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, grad_clip=CLIP,
                           warmup_steps=WARMUP_STEPS, use_gpu=gpu)
        variants = [("faceforge", base, False), ("faceforge_ddp", base, True),
                    ("faceforge_channels_last", replace(base, channels_last=True), False)]
        if rate == 0.1:
            variants.append(("faceforge_channels_last_compile",
                             replace(base, channels_last=True, compile=True), False))
        for name, cfg, ddp in variants:
            runs.append((f"{name}_rate{rate}", lambda c=cfg, d=ddp: faceforge_step(c, args.classes, images, labels,
                                                                                 device, d)))
        if arcface_torch.available():
            runs.append((f"arcface_torch_rate{rate}",
                         lambda r=rate: arcface_torch_step(args.classes, r, images, labels, device, gpu)))
    for key, make in runs:
        try:
            seconds = _timed(make(), args.warmup, args.steps, device)
            report["samples_per_s"][key] = round(args.batch / seconds, 1)
        except Exception as exc:  # noqa: BLE001 - one failed variant (say, compile) must not lose the others
            report["samples_per_s"][key] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        print(key, report["samples_per_s"][key], flush=True)
        if gpu:
            torch.cuda.empty_cache()
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
