"""Everything one retraining leaves in MLflow: params, curves, metrics, plots, Data Docs, lineage, the model.

Called inside an active MLflow run. The registered model is the very ONNX file the gate checked (its SHA-256 is
verified after MLflow wrote its copy), so the version a person approves is byte for byte what was evaluated.
"""

from __future__ import annotations

import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
from mlflow import MlflowClient
from mlflow.data.http_dataset_source import HTTPDatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Metric
from mlflow.models.model import ModelInfo
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import Schema, TensorSpec

from components.io.checksums import sha256_file
from components.io.nested import flatten
from components.serving.lineage import Lineage, describe_origin
from flows.compatibility import compatibility_markdown, compatibility_tags
from flows.tracking import TAG_LIMIT, report_metrics, training_curve
from flows.warm_start import lineage_tags
from pipelines.common import REPORTS
from pipelines.params import Params

MODEL_ARTIFACT = "model"


class _NoPipVersionNotice(logging.Filter):
    """MLflow writes a conda.yaml beside every logged model and asks pip for its version; a uv environment has no
    pip, so each registration printed a WARNING about it. Triton serves the ONNX file, never that environment:
    this one message is dropped, any other MLflow warning still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to resolve installed pip version")


logging.getLogger("mlflow.utils.environment").addFilter(_NoPipVersionNotice())


def gate_tags(gate: dict[str, Any]) -> dict[str, str]:
    """The verdict as the run and the model version both carry it (``gate.status`` / ``gate.reasons``), and the
    compatibility with the champion measured next to it (``compatibility.*``, flows/compatibility.py)."""
    return {"gate.status": gate["status"], "gate.reasons": "; ".join(gate["reasons"])[:TAG_LIMIT]} | \
        compatibility_tags(gate.get("compatibility"), TAG_LIMIT)


def log_params(params: Params) -> None:
    mlflow.log_params({k: json.dumps(v) if isinstance(v, list | dict) else v
                       for k, v in flatten(params.model_dump(mode="json")).items()})


def log_metrics(run_id: str, model_id: str | None = None) -> dict[str, float]:
    """Every stage report's numbers, plus the training curve step by step (one batched call, not one per point).

    ``model_id``: the logged model the reports' numbers describe, linked in the same calls (as MLflow links a
    run's step-0 metrics to a model logged after them, but without its request per metric)."""
    metrics = report_metrics(REPORTS)
    now = int(time.time() * 1000)
    curve = [Metric(key, value, now, step) for step, row in training_curve(REPORTS / "train_loss.csv")
             for key, value in row.items()]
    points = [Metric(key, value, now, 0, model_id=model_id) for key, value in metrics.items()] + curve
    client = MlflowClient()
    for start in range(0, len(points), 1000):  # log_batch accepts at most 1000 metrics per call
        client.log_batch(run_id, metrics=points[start:start + 1000])
    return metrics


def log_dataset(params: Params, data_hash: str) -> None:
    """Lineage: the packed training set, identified by DVC's own hash of ``pack.out_dir``."""
    source = HTTPDatasetSource(url=f"dvc://{params.pack.out_dir.as_posix()}@{data_hash}")
    dataset = MetaDataset(source=source, name=params.pack.out_dir.name, digest=data_hash[:36])
    mlflow.log_input(dataset, context="training", tags={"dvc.md5": data_hash})


def log_artifacts(params: Params) -> None:
    files = {
        # reference.npz: the version's drift reference, read back by the drift flow (flows/drift.py)
        "eval": [params.eval.out_dir / "roc.png", params.eval.out_dir / "tar_far.md",
                 params.eval.out_dir / "reference.npz"],
        "train": [params.train.out_dir / "loss.png", params.train.out_dir / "model.json"],
        "quality": [params.quality_filter.out_dir / "quality.png"],
        "reports": sorted(REPORTS.glob("*.json")) + sorted(REPORTS.glob("*.md")) + sorted(REPORTS.glob("*.csv")),
    }
    for folder, paths in files.items():
        for path in paths:
            if path.is_file():
                mlflow.log_artifact(str(path), folder)
    for folder, path in {"eval/roc": params.eval.out_dir / "roc",
                         "data_docs": params.quality_filter.out_dir / "data_docs"}.items():
        if path.is_dir():
            mlflow.log_artifacts(str(path), folder)


def model_card(params: Params, lineage: Lineage, metrics: dict[str, float], gate: dict[str, Any]) -> str:
    """The page a reviewer reads before setting ``champion``: what was trained on what, and how it scored."""
    t = params.train
    lines = [
        f"# {params.mlflow.registered_model}", "",
        "Face embedder: 112x112 RGB aligned face (`input`, float32, NCHW, [-1, 1]) -> "
        f"L2-normalisable {t.embedding_size}-d `embedding`.", "",
        "## Lineage", "",
        f"- git revision: `{lineage.git_revision}`",
        f"- training data: `{params.pack.out_dir}` (DVC md5 `{lineage.dvc_data_hash}`)",
        f"- ONNX SHA-256: `{lineage.model_sha256}` (`{params.publish.model}`)",
        f"- served variant: {lineage.served_variant or 'unknown'}"
        + (f" ({lineage.served_variant_reason})" if lineage.served_variant_reason else ""),
        f"- started from: {describe_origin(lineage.start, markdown=True)}",
        f"- distilled from: {describe_origin(lineage.teacher, markdown=True) if lineage.teacher else 'no teacher'}",
        f"- backbone `{t.backbone}`, margin `{t.margin}` (s={t.s}, m1={t.m1}, m2={t.m2}, m3={t.m3}), "
        f"Partial FC sample rate {t.sample_rate}, {t.max_steps} steps x {t.batch_size} per worker "
        f"on {t.num_workers} workers, {t.precision}",
        "", "## Evaluation", "", "| metric | value |", "|---|---|",
    ]
    lines += [f"| {k} | {v:.4f} |" for k, v in sorted(metrics.items()) if k.startswith(("eval.", "quantize."))
              and ("tar_at_far" in k or "accuracy" in k or "cosine" in k or "rank" in k)]
    lines += ["", f"## Promotion gate: {gate['status'].upper()}", ""]
    lines += [f"- {r}" for r in gate["reasons"]] or ["All checks passed."]
    lines += ["", *compatibility_markdown(gate.get("compatibility"))]
    lines += ["", "## Intended use and limits", "",
              "Face verification and identification on aligned faces. Accuracy holds only for faces like the "
              "training set; check the evaluation sets above before serving a population they do not cover."]
    return "\n".join(lines) + "\n"


def signature(model: onnx.ModelProto) -> ModelSignature:
    """Input/output tensor specs read from the graph itself (dynamic axes become -1)."""
    def spec(value: onnx.ValueInfoProto) -> TensorSpec:
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        return TensorSpec(np.dtype(dtype), dims, value.name)

    return ModelSignature(inputs=Schema([spec(v) for v in model.graph.input]),
                          outputs=Schema([spec(v) for v in model.graph.output]))


def log_model(model_path: Path, lineage: Lineage) -> ModelInfo:
    """Log the ONNX file under the active run and check MLflow's stored copy byte for byte against the file the
    gate checked (``lineage.model_sha256``).

    Log it before the run's metrics: MLflow links every metric a run already has to a newly logged model with
    one request per metric (~200 here; minutes behind a server that checks a password on each request), while
    ``log_metrics(run_id, model_id)`` links them in its batched calls."""
    import onnxruntime

    model = onnx.load(str(model_path))
    info = mlflow.onnx.log_model(
        model, name=MODEL_ARTIFACT, signature=signature(model), save_as_external_data=False,
        # Explicit requirements: MLflow's inference would load the model in a subprocess just to guess them.
        pip_requirements=[f"onnx=={onnx.__version__}", f"onnxruntime=={onnxruntime.__version__}"],
        metadata={"faceforge": lineage.config_parameters()},
    )
    with tempfile.TemporaryDirectory() as tmp:
        stored = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=tmp)) / "model.onnx"
        stored_sha = sha256_file(stored)
        if stored_sha != lineage.model_sha256:
            raise RuntimeError(f"MLflow's copy of {model_path} differs from the file the gate checked "
                               f"({stored_sha[:12]} vs {lineage.model_sha256[:12]})")
    return info


def register_model(params: Params, model_path: Path, lineage: Lineage, gate: dict[str, Any],
                   logged: ModelInfo | None = None) -> str:
    """Register the model ``logged`` under the run (``log_model`` of ``model_path`` when not given yet).

    The version is created together with all its tags in one registry call (verdict, checksum, lineage), so a
    tracking server dying half-way can leave an unregistered logged model but never a version without its
    verdict. A retry of the same Prefect flow run finds the version it already created instead of adding one.
    """
    client = MlflowClient()
    name = params.mlflow.registered_model
    tags = gate_tags(gate) | {"model_sha256": lineage.model_sha256, "git_revision": lineage.git_revision,
                              "dvc_data_hash": lineage.dvc_data_hash, "onnx_file": str(model_path),
                              "prefect.flow_run_id": lineage.prefect_flow_run_id or ""}
    tags |= {k: v for k, v in (("dvc_lock_sha256", lineage.dvc_lock_sha256), ("dvc_remote", lineage.dvc_remote),
                               ("dvc_commit", lineage.dvc_commit), ("served_variant", lineage.served_variant),
                               ("served_variant_reason", lineage.served_variant_reason)) if v}
    tags |= lineage.threshold_tags("threshold.")
    tags |= {k: json.dumps(v, sort_keys=True) for k, v in (("start", lineage.start), ("teacher", lineage.teacher))
             if v}
    tags |= lineage_tags(client, params, lineage.start)
    existing = _registered_by_this_flow_run(client, name, tags)
    if existing is not None:
        return existing
    info = logged or log_model(model_path, lineage)
    version = str(mlflow.register_model(info.model_uri, name, tags=tags).version)
    if gate["passed"]:  # only a candidate that passed waits for a person's approval
        client.set_registered_model_alias(name, params.mlflow.challenger_alias, version)
    return version


def _registered_by_this_flow_run(client: MlflowClient, name: str, tags: dict[str, str]) -> str | None:
    if not tags["prefect.flow_run_id"]:
        return None
    query = (f"name = '{name}' and tags.`prefect.flow_run_id` = '{tags['prefect.flow_run_id']}' "
             f"and tags.model_sha256 = '{tags['model_sha256']}'")
    found = client.search_model_versions(query)
    return str(max(int(v.version) for v in found)) if found else None
