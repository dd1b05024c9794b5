"""Optimiser and learning-rate schedule: warmup, then polynomial (power 2, as arcface_torch) or cosine decay."""

from __future__ import annotations

import math
from functools import partial

import torch
from torch import nn

from components.heads.partial_fc import PartialFC
from components.training.config import TrainConfig
from components.training.lazy_sgd import LazySGD


def build_optimizer(backbone: nn.Module, head: PartialFC, cfg: TrainConfig,
                    extra: list[nn.Parameter] | None = None) -> torch.optim.Optimizer:
    """SGD is ``LazySGD``: a sampled head's centres cost O(rate x C) per step, with the dense result
    (components/training/lazy_sgd.py); the optimiser keeps the sampled rows current through
    ``head.attach_row_reader``. AdamW's update of a row without gradient is not linear (its second moment enters
    through a square root), so it has no such closed form and is refused below sample rate 1. ``extra``
    (a distillation projection) learns at the head's rate: it is new, like the centres."""
    groups = [{"params": [p for p in backbone.parameters() if p.requires_grad], "lr": cfg.lr * cfg.backbone_lr_scale},
              {"params": [head.weight], "lr": cfg.lr}]
    if extra:
        groups.append({"params": extra, "lr": cfg.lr})
    if cfg.optimizer == "sgd":
        groups[1]["centres"] = True  # updated in place by LazySGD, lazily where the gradient is row-sparse
        optimizer = LazySGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
        head.attach_row_reader(partial(optimizer.read_rows, head.weight))
        return optimizer
    if head.sample_rate < 1:
        raise ValueError(f"train.optimizer adamw needs train.sample_rate 1 (got {head.sample_rate}): "
                         "only SGD updates unsampled centres exactly at the sampled cost")
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    if warmup and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    return (1 - progress) ** 2


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """One schedule for both groups, scaling each group's own base rate (the backbone's: ``backbone_lr_scale``)."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg.warmup_steps, cfg.schedule))
