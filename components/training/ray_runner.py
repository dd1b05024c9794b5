"""Run ``train_worker`` on Ray Train: local Ray by default, a cluster when ``RAY_ADDRESS`` is set."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from components.recordio.insightface import FaceRecordDataset
from components.training.config import TrainConfig
from components.training.loop import check_inputs, train_worker
from components.training.sessions import RaySession


@dataclass(frozen=True)
class TrainResult:
    metrics: dict[str, Any]
    checkpoint_dir: Path


def _worker(config: dict[str, Any]) -> None:
    train_worker(config["cfg"], RaySession())


def run_on_ray(cfg: TrainConfig, storage: Path, name: str, resume_from: Path | None = None) -> TrainResult:
    import ray
    from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Workers do not share the driver's working directory; and bad inputs must fail here, once, rather
    # than in every worker and again on every FailureConfig retry.
    cfg = replace(cfg, data_dir=str(Path(cfg.data_dir).resolve()), out_dir=str(Path(cfg.out_dir).resolve()))
    check_inputs(cfg, FaceRecordDataset(cfg.data_dir), cfg.num_workers)
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS"), include_dashboard=False, log_to_driver=True)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"cfg": cfg},
        scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu),
        run_config=RunConfig(
            name=name,
            storage_path=str(Path(storage).resolve()),
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
        resume_from_checkpoint=Checkpoint.from_directory(str(resume_from)) if resume_from else None,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {name} finished without a checkpoint: {result.error}")
    return TrainResult(dict(result.metrics or {}), Path(result.checkpoint.path))
