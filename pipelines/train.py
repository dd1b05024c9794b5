"""DVC stage ``train``: packed faces -> backbone ``state_dict`` + config, via Ray Train (TorchTrainer)."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pandas as pd
import torch

from components.io.atomic import atomic_dir
from components.models import get_model
from components.recordio.insightface import FaceRecordDataset
from components.training.batchnorm import recalibrate_batchnorm
from components.training.checkpoint import TRAINER
from components.training.config import TrainConfig
from components.training.plots import plot_loss
from components.training.ray_runner import run_on_ray
from pipelines.common import REPORTS, timed, write_report
from pipelines.params import Params

STAGE = "train"


def run(params: Params) -> dict[str, Any]:
    p = params.train
    fields = {k: v for k, v in p.model_dump().items() if k in TrainConfig.__dataclass_fields__}
    report: dict[str, Any] = {}
    with timed(report), atomic_dir(p.out_dir) as tmp:
        cfg = TrainConfig(**(fields | {"data_dir": str(params.pack.out_dir), "out_dir": str(tmp)}))
        result = run_on_ray(cfg, tmp / "ray", STAGE, resume_from=p.resume_from)
        trainer = torch.load(result.checkpoint_dir / TRAINER, map_location="cpu", weights_only=False)
        backbone = get_model(p.backbone, embedding_size=p.embedding_size)
        backbone.load_state_dict(trainer["backbone"])
        bn_samples = recalibrate_batchnorm(backbone, FaceRecordDataset(params.pack.out_dir, seed=p.seed),
                                           p.bn_recalibration_samples, p.batch_size, p.seed)
        torch.save(backbone.state_dict(), tmp / "backbone.pth")
        model = {"backbone": p.backbone, "embedding_size": p.embedding_size, "input_size": [112, 112],
                 "num_classes": trainer["extra"]["num_classes"], "normalisation": "(rgb / 127.5) - 1"}
        (tmp / "model.json").write_text(json.dumps(model, indent=2) + "\n")
        shutil.copytree(result.checkpoint_dir, tmp / "checkpoint")  # resume point (re-shardable)
        shutil.rmtree(tmp / "ray")
        history = pd.DataFrame(result.metrics.get("history", []))
        plot_loss(history, tmp / "loss.png")
    history.to_csv(REPORTS / "train_loss.csv", index=False)
    report.update(steps=int(result.metrics["step"]), final_loss=round(float(result.metrics["loss"]), 4),
                  skipped_steps=int(result.metrics.get("skipped_steps", 0)),
                  samples_per_s=round(float(history.samples_per_s.tail(max(1, len(history) // 2)).mean()), 2)
                  if len(history) else 0.0,
                  workers=p.num_workers, sample_rate=p.sample_rate, backbone=p.backbone,
                  bn_recalibration_samples=bn_samples)
    write_report(STAGE, report)
    return report
