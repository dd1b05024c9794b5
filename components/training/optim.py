"""Optimiser and learning-rate schedule: warmup, then polynomial (power 2, as arcface_torch) or cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn

from components.training.config import TrainConfig


def build_optimizer(backbone: nn.Module, head: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = [{"params": [p for p in backbone.parameters() if p.requires_grad]}, {"params": [head.weight]}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
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
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, cfg.warmup_steps, cfg.schedule))
