"""The per-worker training loop, read top to bottom; the same function runs under Ray Train or alone.

The loop talks to its environment only through a ``Session`` (rank, device, model wrapping, the
checkpoint to resume from, reporting), so Ray Train and a plain process share every line of it.
"""

from __future__ import annotations

import math
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from components.heads import CombinedMarginLoss, CurricularFace, PartialFC
from components.models.loading import load_start
from components.recordio.dataset import FaceRecordDataset
from components.recordio.format import unpack_header
from components.recordio.insightface import read_property
from components.training.batchnorm import freeze_batchnorm
from components.training.centres import class_mean_centres
from components.training.checkpoint import load_checkpoint, save_checkpoint
from components.training.compatible import frozen_classifier
from components.training.config import TrainConfig
from components.training.distill import Distillation, WithTeacherTargets
from components.training.optim import build_optimizer, build_scheduler
from components.training.replicas import check_replicas


class Session(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def wrap_model(self, model: nn.Module) -> nn.Module: ...
    def resume_dir(self) -> Path | None: ...
    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None: ...


class TrainingInputError(ValueError):
    """The data or settings cannot train; raised before the first step."""


def check_inputs(cfg: TrainConfig, dataset: FaceRecordDataset, world_size: int) -> int:
    """Validate what would otherwise fail mid-run; returns the number of classes."""
    root = Path(cfg.data_dir)
    num_classes, height, width = read_property(root)
    if len(dataset) == 0:
        raise TrainingInputError(f"{root}: the dataset holds no images")
    if (height, width) != (112, 112):
        raise TrainingInputError(f"{root / 'property'}: images are {height}x{width}, the backbones need 112x112")
    header, _ = unpack_header(dataset.reader.read(0))
    if header.flag > 0:
        in_file = int(header.label[1] - header.label[0])
        if in_file != num_classes:
            raise TrainingInputError(f"{root / 'property'}: says {num_classes} classes, train.rec holds {in_file}")
    if cfg.batch_size % cfg.grad_accumulation:
        raise TrainingInputError(f"train.batch_size {cfg.batch_size} is not divisible by "
                                 f"train.grad_accumulation {cfg.grad_accumulation}")
    if cfg.batch_size * world_size > len(dataset):
        raise TrainingInputError(f"a global batch of {cfg.batch_size} x {world_size} workers exceeds the "
                                 f"{len(dataset)} images in {root}")
    if num_classes < world_size:
        raise TrainingInputError(f"{num_classes} classes cannot be sharded over {world_size} workers")
    if cfg.compatible_weight and not cfg.init_from:
        raise TrainingInputError("compatible training keeps the space of a start model: random weights have none")
    return num_classes


def build_margin(cfg: TrainConfig) -> nn.Module:
    if cfg.margin == "curricular":
        return CurricularFace(cfg.s, cfg.m2)
    return CombinedMarginLoss(cfg.s, cfg.m1, cfg.m2, cfg.m3)


def _autocast(cfg: TrainConfig, device: torch.device):  # noqa: ANN202
    if cfg.precision == "fp32" or (cfg.precision == "fp16" and device.type != "cuda"):
        return nullcontext()
    dtype = torch.float16 if cfg.precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _batches(dataset: FaceRecordDataset | WithTeacherTargets, cfg: TrainConfig, session: Session, epoch: int,
             skip: int) -> DataLoader:
    """This worker's micro-batches for ``epoch``, starting after ``skip`` optimiser steps (exact resume)."""
    dataset.set_epoch(epoch)
    sampler = DistributedSampler(dataset, num_replicas=session.world_size, rank=session.rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    sampler.set_epoch(epoch)
    indices = list(sampler)[skip * cfg.batch_size:]
    return DataLoader(Subset(dataset, indices), batch_size=cfg.batch_size // cfg.grad_accumulation,
                      num_workers=cfg.loader_workers, drop_last=True, pin_memory=session.device.type == "cuda")


def build_backbone(cfg: TrainConfig) -> nn.Module:
    """The backbone as this run trains it, from ``init_from``'s weights when set: NHWC when ``channels_last``,
    compiled in place when ``compile`` (``Module.compile`` keeps the state-dict keys, so checkpoints and export
    read it as usual)."""
    model = load_start(cfg.backbone, cfg.embedding_size, cfg.init_from)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.compile:
        model.compile()
    return model


def forward_backward(backbone: nn.Module, head: PartialFC, scaler: torch.amp.GradScaler, cfg: TrainConfig,
                     images: torch.Tensor, labels: torch.Tensor, device: torch.device,
                     train_backbone: bool = True, targets: torch.Tensor | None = None,
                     distill: Distillation | None = None, influence: PartialFC | None = None) -> float:
    """One micro-batch: forward (autocast per ``precision``), loss / ``grad_accumulation``, scaled backward.
    Returns the loss; reading it waits for the GPU, as the loop needs it for the non-finite guard anyway.
    Without ``train_backbone`` (``freeze_backbone_steps``) the backbone runs without autograd: only the head
    gets a gradient, and the backbone's optimiser state does not gather the frozen steps' gradients.
    With ``distill``, the loss adds the distillation term against the teacher's ``targets``; with ``influence``
    (the old model's frozen classifier), BCT's influence loss weighted by ``compatible_weight``."""
    memory_format = torch.channels_last if cfg.channels_last else torch.preserve_format
    images = images.to(device, non_blocking=True, memory_format=memory_format)
    labels = labels.to(device, non_blocking=True)
    with _autocast(cfg, device), torch.set_grad_enabled(train_backbone):
        embeddings = backbone(images)
    loss = head(embeddings, labels)
    if influence is not None:
        loss = loss + cfg.compatible_weight * influence(embeddings, labels)
    if distill is not None and targets is not None:
        loss = loss + distill(embeddings, targets.to(device, non_blocking=True))
    loss = loss / cfg.grad_accumulation
    scaler.scale(loss).backward()
    return float(loss.detach())


def optimiser_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, backbone: nn.Module,
                   grad_clip: float) -> None:
    """Clip, step, zero. The clip is over the **backbone's** gradient norm only, as arcface_torch clips
    (``clip_grad_norm_(backbone.parameters(), 5)``): DDP made those gradients identical on every worker, so
    every worker computes the same factor and the replicas stay identical. The head's centres are not clipped:
    each worker's shard differs, and a norm including it gave each worker its own factor (docs/training.md)."""
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_([p for p in backbone.parameters() if p.grad is not None], grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def start_centres(head: PartialFC, backbone: nn.Module, cfg: TrainConfig, device: torch.device) -> None:
    """The head's first centres where training starts from a model: a warm start's carried centres of the people
    the earlier version knew, and every other class's normalised mean embedding under the start backbone."""
    rows = slice(head.class_start, head.class_start + head.num_local)
    carried = torch.load(cfg.warm_centres, weights_only=True) if cfg.warm_centres else None
    known = carried["known"][rows] if carried else None
    clean = FaceRecordDataset(cfg.data_dir, random_flip=False)
    centres, found = class_mean_centres(backbone, clean, head.class_start, head.num_local, cfg.embedding_size,
                                        cfg.batch_size, device, skip=known)
    with torch.no_grad():
        head.weight[found] = centres[found]
        if known is not None and known.any():
            head.weight[known] = carried["centres"][rows][known].to(head.weight.dtype)


def train_worker(cfg: TrainConfig, session: Session) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)
    faces = FaceRecordDataset(cfg.data_dir, seed=cfg.seed, degrade_fraction=cfg.degrade_fraction)
    num_classes = check_inputs(cfg, faces, session.world_size)
    dataset: FaceRecordDataset | WithTeacherTargets = faces
    distill = None
    if cfg.teacher_targets:
        targets = np.load(cfg.teacher_targets, mmap_mode="r")
        dataset = WithTeacherTargets(faces, targets)
        distill = Distillation(cfg.embedding_size, targets.shape[2], cfg.distill_weight).to(session.device)
    steps_per_epoch = len(dataset) // (cfg.batch_size * session.world_size)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch

    resume = session.resume_dir()
    backbone = build_backbone(cfg).to(session.device)
    head = PartialFC(build_margin(cfg), cfg.embedding_size, num_classes, cfg.sample_rate, seed=cfg.seed)
    if cfg.init_from and (resume is None or cfg.compatible_weight):  # a resume loads the head it had reached
        start_centres(head, backbone, cfg, session.device)
    # BCT's old classifier: the head as the start left it (a resume rebuilds it above, then loads its own head)
    influence = frozen_classifier(head).to(session.device) if cfg.compatible_weight else None
    backbone = session.wrap_model(backbone)
    if cfg.freeze_batchnorm:
        freeze_batchnorm(backbone)
    head.to(session.device)
    optimizer = build_optimizer(backbone, head, cfg, list(distill.parameters()) if distill else None)
    scheduler = build_scheduler(optimizer, cfg, total_steps)
    scaler = torch.amp.GradScaler(session.device.type, enabled=cfg.precision == "fp16"
                                  and session.device.type == "cuda")
    step, history = 0, []
    if resume is not None:
        step, extra = load_checkpoint(resume, backbone, head, optimizer, scheduler)
        history = extra.get("history", [])
        if distill is not None:
            distill.load_state_dict(extra["distill"])

    nonfinite = skipped = 0
    window_start, window_steps = time.perf_counter(), 0
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        micro_batches = iter(_batches(dataset, cfg, session, epoch, offset))
        for _ in range(offset, steps_per_epoch):
            if step >= total_steps:
                break
            loss_sum = 0.0
            for _ in range(cfg.grad_accumulation):
                images, labels, *targets = next(micro_batches)
                loss_sum += forward_backward(backbone, head, scaler, cfg, images, labels, session.device,
                                             train_backbone=step >= cfg.freeze_backbone_steps,
                                             targets=targets[0] if targets else None, distill=distill,
                                             influence=influence)
            if not math.isfinite(loss_sum):
                # The loss is global, so every worker skips the same step and stays in lock-step.
                optimizer.zero_grad(set_to_none=True)
                # A step over no gradient changes nothing (torch's optimisers skip a parameter whose grad is
                # None) and keeps the schedule in step with the optimiser: the scheduler below advances as
                # for any step, without torch's "lr_scheduler.step() before optimizer.step()" warning.
                optimizer.step()
                nonfinite += 1
                skipped += 1
                print(f"[rank {session.rank}] step {step}: non-finite loss {loss_sum}, update skipped", flush=True)
                if nonfinite >= cfg.nonfinite_limit:
                    raise FloatingPointError(f"{nonfinite} consecutive non-finite losses up to step {step}: "
                                             "lower train.lr, raise train.warmup_steps or use fp32")
            else:
                nonfinite = 0
                if distill is not None:
                    distill.average_gradients()
                optimiser_step(optimizer, scaler, backbone, cfg.grad_clip)
            scheduler.step()
            step += 1
            if cfg.replica_check_every and step % cfg.replica_check_every == 0:
                check_replicas(backbone, step)
            window_steps += 1
            if step % cfg.log_every == 0 or step == total_steps:
                elapsed = time.perf_counter() - window_start
                history.append({"step": step, "epoch": epoch, "loss": loss_sum, "lr": scheduler.get_last_lr()[-1],
                                "samples_per_s": window_steps * cfg.batch_size * session.world_size / elapsed})
                window_start, window_steps = time.perf_counter(), 0
                if session.rank == 0:
                    h = history[-1]
                    print(f"step {step}/{total_steps} loss {h['loss']:.4f} lr {h['lr']:.5f} "
                          f"{h['samples_per_s']:.1f} samples/s", flush=True)
            if step % cfg.checkpoint_every == 0 or step == total_steps:
                with tempfile.TemporaryDirectory() as tmp:
                    save_checkpoint(Path(tmp), session.rank, session.world_size, backbone, head, optimizer,
                                    scheduler, step, extra={"config": asdict(cfg), "num_classes": num_classes,
                                           "history": history, "distill": distill.state_dict() if distill else None})
                    session.report({"step": step, "loss": loss_sum, "skipped_steps": skipped,
                                    "history": history}, Path(tmp))
    return {"step": step, "history": history, "num_classes": num_classes, "skipped_steps": skipped}
