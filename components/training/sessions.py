"""Where the training loop runs: Ray Train workers, or one plain process (benchmarks, debugging)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn


class LocalSession:
    """One process; uses ``torch.distributed`` if the caller initialised it. Checkpoints go to a folder."""

    def __init__(self, checkpoint_root: Path, resume_from: Path | None = None,
                 device: torch.device | None = None) -> None:
        self.rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        self.world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        self.device = device or torch.device("cpu")
        self.checkpoint_root = Path(checkpoint_root)
        self._resume = resume_from
        self.reports: list[dict[str, Any]] = []

    def wrap_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.world_size > 1:
            return nn.parallel.DistributedDataParallel(model)
        return model

    def resume_dir(self) -> Path | None:
        return self._resume

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.reports.append(metrics)
        if checkpoint_dir is not None:
            target = self.checkpoint_root / f"checkpoint_{metrics['step']:08d}"
            shutil.copytree(checkpoint_dir, target, dirs_exist_ok=True)  # ranks merge into one folder


class RaySession:
    """Inside a ``TorchTrainer`` worker: Ray provides rank, device, DDP wrapping and checkpoint storage."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        self._train = ray.train
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()

    def wrap_model(self, model: nn.Module) -> nn.Module:
        import ray.train.torch

        return ray.train.torch.prepare_model(model)

    def resume_dir(self) -> Path | None:
        checkpoint = self._train.get_checkpoint()
        if checkpoint is None:
            return None
        # A local copy, wherever the run's storage is (local folder, shared filesystem or S3).
        return Path(checkpoint.to_directory())

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        checkpoint = self._train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        self._train.report(metrics, checkpoint=checkpoint)
