"""DVC stage ``train``: packed faces -> backbone ``state_dict`` + config, via Ray Train (TorchTrainer).

The run lives under ``train.storage_path`` with a name derived from what determines its result (the packed
data and every result-affecting ``train.*`` setting), outside the stage's atomic output folder: when the
driver dies (Ctrl-C, OOM, reboot, ``kill -9``), the next ``dvc repro`` finds the same run and Ray Train resumes
it from its last complete checkpoint. A finished run's storage is deleted unless ``train.keep_run_storage``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from components.io.atomic import atomic_dir
from components.io.checksums import sha256_file
from components.models.loading import load_start
from components.models.onnx_backbone import ONNX_BACKBONE
from components.recordio.dataset import FaceRecordDataset
from components.recordio.insightface import read_property
from components.training.batchnorm import recalibrate_batchnorm
from components.training.centres import carried_centres
from components.training.checkpoint import TRAINER, all_centres
from components.training.config import TrainConfig
from components.training.distill import teacher_targets
from components.training.plots import plot_loss
from components.training.ray_runner import delete_run, local_copy, run_on_ray
from pipelines.common import REPORTS, timed, write_report
from pipelines.params import Params, TrainParams, runtime_settings
from pipelines.warm_start import read_warm_start

STAGE = "train"
ARCHITECTURE = "architecture.onnx"
TEACHER_TARGETS = "teacher_targets.npy"
WARM_CENTRES = "warm_centres.pt"
IDENTITIES = "identities.csv"  # label -> identity name, which a warm retrain matches centres by


def start_of(params: Params) -> tuple[Path | None, dict[str, Any] | None, int]:
    """(what the run starts from, the warm start's record or None, epochs): the warm_start stage's folder
    when it holds a registered version, else ``train.init_from``."""
    warm = read_warm_start(params.warm_start.out_dir)
    if warm is None:
        return params.train.init_from, None, params.train.epochs
    return Path(params.warm_start.out_dir), warm, params.warm_start.epochs or params.train.epochs


def run_name(params: Params) -> str:
    """Same packed data + same result-affecting settings = same run (so an interrupted one is resumed)."""
    p = params.train
    start, _, epochs = start_of(params)
    settings = {k: v for k, v in p.model_dump(mode="json").items()
                if k not in runtime_settings(TrainParams) and k != "out_dir"} | {"epochs": epochs}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    packed = Path(params.pack.out_dir)
    inputs = [packed / "property", packed / "train.idx"]  # the index holds every record's offset
    for model in (start, p.teacher):  # the same path may hold another model
        if model is not None:
            inputs += sorted(f for f in Path(model).rglob("*") if f.is_file()) if Path(model).is_dir() else [model]
    for path in inputs:
        digest.update(sha256_file(path).encode() if path.is_file() else b"missing")
    return f"{STAGE}-{digest.hexdigest()[:16]}"


def model_record(params: Params, path: Path | None, key: str = "init_from") -> dict[str, Any] | None:
    """What a run started from or was taught by, for the version's lineage: ``None``, the import_model stage's
    record (source, its SHA-256 and licence, the conversion) when ``path`` is that stage's model, else the path
    and the file's SHA-256."""
    if path is None:
        return None
    warm = read_warm_start(params.warm_start.out_dir) if key == "init_from" else None
    if warm is not None and Path(path).resolve() == Path(params.warm_start.out_dir).resolve():
        return {key: str(path)} | warm
    imported = Path(params.import_model.out_dir)
    record_path = imported / "model.json"
    if Path(path).resolve() == (imported / "model.onnx").resolve() and record_path.is_file():
        return {key: str(path)} | json.loads(record_path.read_text())
    return {key: str(path), "sha256": sha256_file(Path(path)) if Path(path).is_file() else None}


def _identities(folder: Path) -> list[str] | None:
    """The class names of a packed set or a train output (label order); None where it has none (a RecordIO set
    packed elsewhere, a train output from before outputs named their classes)."""
    path = folder / IDENTITIES
    return pd.read_csv(path).identity.astype(str).tolist() if path.is_file() else None


def carry_centres(warm_dir: Path, packed: Path, out: Path) -> dict[str, int]:
    """Write the warm start's centres for the identities of ``packed`` (components/training/centres.py) to
    ``out``; returns how many identities were carried, are new and were dropped, for the lineage. Without names
    on both sides nothing can be matched: the backbone is kept and every centre starts at its class mean."""
    old_names, new_names = _identities(warm_dir), _identities(packed)
    if old_names is None or new_names is None:
        num_classes = read_property(packed)[0]
        torch.save({"centres": None, "known": torch.zeros(num_classes, dtype=torch.bool)}, out)
        return {"carried_identities": 0, "new_identities": num_classes, "dropped_identities": 0}
    centres, known = carried_centres(all_centres(warm_dir / "checkpoint"), old_names, new_names)
    torch.save({"centres": centres, "known": known}, out)
    carried = int(known.sum())
    return {"carried_identities": carried, "new_identities": len(new_names) - carried,
            "dropped_identities": len(set(old_names) - set(new_names))}


def run(params: Params) -> dict[str, Any]:
    p = params.train
    fields = {k: v for k, v in p.model_dump().items() if k in TrainConfig.__dataclass_fields__}
    report: dict[str, Any] = {}
    name = run_name(params)
    start, warm, epochs = start_of(params)
    with timed(report), atomic_dir(p.out_dir) as tmp:
        init_from = str(start) if start else None
        backbone = load_start(p.backbone, p.embedding_size, init_from)  # a bad start model fails before Ray
        carried = carry_centres(Path(start), Path(params.pack.out_dir), tmp / WARM_CENTRES) if warm else None
        targets = None
        if p.teacher is not None:  # once per crop here, rather than a teacher forward per sample and epoch
            targets = tmp / TEACHER_TARGETS
            np.save(targets, teacher_targets(Path(p.teacher), FaceRecordDataset(params.pack.out_dir,
                                                                                random_flip=False)))
        # train.compatible_with: start -- a warm retrain keeps the space of the version it continues from (BCT)
        compatible = p.compatible_with == "start" and warm is not None
        cfg = TrainConfig(**(fields | {"data_dir": str(params.pack.out_dir), "out_dir": str(tmp), "epochs": epochs,
                                       "init_from": init_from, "teacher_targets": str(targets) if targets else None,
                                       "warm_centres": str(tmp / WARM_CENTRES) if warm else None,
                                       "compatible_weight": p.compatible_weight if compatible else 0.0,
                                       "freeze_batchnorm": p.freeze_batchnorm and start is not None}))
        result = run_on_ray(cfg, p.storage_path, name, resume_from=p.resume_from)
        for cache in (targets, tmp / WARM_CENTRES):  # inputs of this run, not part of the model
            if cache is not None:
                cache.unlink(missing_ok=True)
        checkpoint = local_copy(result.checkpoint, tmp / "checkpoint")  # resume point (re-shardable)
        trainer = torch.load(checkpoint / TRAINER, map_location="cpu", weights_only=False)
        backbone.load_state_dict(trainer["backbone"])
        # frozen statistics are the ones the weights were trained under: re-estimating them would undo that
        bn_samples = 0 if cfg.freeze_batchnorm else recalibrate_batchnorm(
            backbone, FaceRecordDataset(params.pack.out_dir, seed=p.seed), p.bn_recalibration_samples,
            p.batch_size, p.seed)
        torch.save(backbone.state_dict(), tmp / "backbone.pth")
        start_record = (model_record(params, start) | (carried or {})
                        | ({"compatible_weight": p.compatible_weight} if compatible else {})) if start else None
        if (Path(params.pack.out_dir) / IDENTITIES).is_file():  # the names the centres belong to
            shutil.copyfile(Path(params.pack.out_dir) / IDENTITIES, tmp / IDENTITIES)
        model = {"backbone": p.backbone, "embedding_size": p.embedding_size, "input_size": [112, 112],
                 "num_classes": trainer["extra"]["num_classes"], "normalisation": "(rgb / 127.5) - 1",
                 "start": start_record}
        if p.backbone == ONNX_BACKBONE:  # the graph the weights belong to (models/loading.load_backbone)
            shutil.copyfile(Path(start) / ARCHITECTURE if Path(start).is_dir() else start, tmp / ARCHITECTURE)
            model["architecture"] = ARCHITECTURE
        (tmp / "model.json").write_text(json.dumps(model, indent=2) + "\n")
        history = pd.DataFrame(result.metrics.get("history", []))
        plot_loss(history, tmp / "loss.png")
    if not p.keep_run_storage:
        delete_run(p.storage_path, name)
    REPORTS.mkdir(exist_ok=True)
    history.to_csv(REPORTS / "train_loss.csv", index=False)
    report.update(steps=int(result.metrics["step"]), final_loss=round(float(result.metrics["loss"]), 4),
                  skipped_steps=int(result.metrics.get("skipped_steps", 0)),
                  samples_per_s=round(float(history.samples_per_s.tail(max(1, len(history) // 2)).mean()), 2)
                  if len(history) else 0.0,
                  workers=p.num_workers, sample_rate=p.sample_rate, backbone=p.backbone, run=name,
                  resumed_from_step=result.resumed_from_step, start=start_record,
                  teacher=model_record(params, p.teacher, "teacher"),
                  freeze_batchnorm=cfg.freeze_batchnorm, bn_recalibration_samples=bn_samples)
    write_report(STAGE, report)
    return report
