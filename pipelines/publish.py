"""DVC stage ``publish``: the candidate Triton repository, proven by a real Triton server.

The stage writes the candidate repository (``publish.candidate_dir``, one version) with ``config.pbtxt``
generated from the ONNX graph and the model's lineage as far as files tell it (git revision, DVC data hash,
checksum, metrics: nothing DVC's cache cannot see, so a restored or skipped stage is never stale). It then
infra-validates: the bundled Triton has only the python backend, so what it loads is a **python-backend copy**
of the same ONNX file (``model.py`` running ONNX Runtime), compared over HTTP and gRPC with ONNX Runtime; the
published ``onnxruntime``/TensorRT config itself is checked against Triton's protobuf schema, not loaded.
With ``publish.pipeline_name`` set, the photo-in model is published next to the embedder (its own version,
pinned to that embedder version) and checked too: raw photos through Triton against the same detect -> align
-> embed code run in this process.
Serving happens after the gate and a person's approval (flows/promotion.py).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from components.io.atomic import atomic_dir
from components.io.checksums import sha256_file
from components.io.nested import numeric
from components.serving.lineage import Lineage, headline_metrics
from components.serving.pipeline_version import PipelineSpec, serve_pair
from components.serving.repository import check_model_name, publish_onnx
from components.serving.store import LocalStore, Store
from components.serving.triton_config import ServingOptions
from pipelines.common import REPORTS, timed, write_report
from pipelines.params import Params, PublishParams

if TYPE_CHECKING:  # OpenCV and ONNX Runtime load only where a photo is answered
    from components.serving.photo import PhotoSettings

STAGE = "publish"


def _git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _data_hash(params: Params) -> str:
    """DVC's hash of the packed training data, from dvc.lock (the dataset this model was trained on)."""
    lock = Path("dvc.lock")
    if not lock.is_file():
        return "unknown"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for out in stages.get("pack", {}).get("outs", []):
        if Path(out.get("path", "")) == params.pack.out_dir:
            return str(out.get("md5", "unknown"))
    return "unknown"


def served_variant(model_sha256: str) -> tuple[str | None, str | None]:
    """("fp32" | "int8", why) for a model the quantize stage measured, from reports/quantize.json."""
    report = REPORTS / "quantize.json"
    quantize = json.loads(report.read_text()) if report.is_file() else {}
    variant = next((k for k, sha in quantize.get("sha256", {}).items() if sha == model_sha256), None)
    if variant is None:
        return None, None
    if variant == quantize.get("serve"):
        return variant, "; ".join(quantize.get("serve_reasons", [])) or None
    return variant, f"publish.model names it, although the quantize verdict serves {quantize.get('serve')}"


def file_lineage(params: Params, onnx_path: Path) -> Lineage:
    """The lineage the pipeline's own files give: the registry adds run, version and verdict later."""
    eval_report = REPORTS / "eval.json"
    evaluated = json.loads(eval_report.read_text()) if eval_report.is_file() else {}
    metrics = headline_metrics(numeric(evaluated))
    thresholds = evaluated.get(params.eval.ijbc_target, {}).get("thresholds", {})
    train = {f"train.{k}": v for k, v in params.train.model_dump(mode="json").items()}
    train_report = REPORTS / "train.json"
    trained = json.loads(train_report.read_text()) if train_report.is_file() else {}
    export_report = REPORTS / "export.json"
    exported = json.loads(export_report.read_text()) if export_report.is_file() else {}
    if exported.get("trained") is False:  # served as imported: no training shaped it (pipelines/export.py)
        train, trained = {}, {"start": exported["start"]}
    sha = sha256_file(onnx_path)
    variant, reason = served_variant(sha)
    return Lineage(model_sha256=sha, git_revision=_git_revision(), dvc_data_hash=_data_hash(params),
                   served_variant=variant, served_variant_reason=reason, metrics=metrics, thresholds=thresholds,
                   params=train, start=trained.get("start"), teacher=trained.get("teacher"))


def serving_options(p: PublishParams, lineage: Lineage) -> ServingOptions:
    return ServingOptions(backend=p.backend, max_batch_size=p.max_batch_size,
                          preferred_batch_sizes=tuple(p.preferred_batch_sizes), max_queue_delay_us=p.max_queue_delay_us,
                          instance_kind=p.instance_kind, instance_count=p.instance_count, tensorrt=p.tensorrt,
                          tensorrt_precision=p.tensorrt_precision, lineage=lineage.config_parameters())


def pipeline_spec(params: Params) -> PipelineSpec | None:
    """The photo-in model built with the detect and align stages' own settings, or None when
    ``publish.pipeline_name`` is null."""
    p = params.publish
    if not p.pipeline_name:
        return None
    detector, photo = photo_path(params)
    return PipelineSpec(check_model_name(p.pipeline_name), detector, photo, p.pipeline_max_batch_size,
                        p.max_queue_delay_us, p.pipeline_instance_count)


def photo_path(params: Params) -> tuple[Path, PhotoSettings]:
    """The detector file and the settings a served photo goes through: the detect and align stages' own."""
    from components.detect.factory import DetectorConfig, detector_kind
    from components.serving.photo import PhotoSettings

    d = params.detect
    detector = DetectorConfig(d.model_path, d.model_kind, d.input_size, d.score_threshold, d.nms_threshold)
    return detector.resolved_path, PhotoSettings(detector_kind(detector), d.input_size,  # type: ignore[arg-type]
                                                 d.score_threshold, d.nms_threshold, d.centre_weight, d.max_pixels,
                                                 params.align.image_size)


def push(store: Store, name: str, onnx_path: Path, options: ServingOptions, lineage: Lineage,
         pipeline: PipelineSpec | None) -> tuple[int, int | None]:
    """Publish ``onnx_path`` as the next version of ``store`` and serve it with its photo-in model;
    returns (embedder version, pipeline version or None)."""
    version = publish_onnx(store, name, onnx_path, options, {"lineage": lineage.manifest()}, serve=False)
    return version, serve_pair(store, name, version, pipeline)


def validation_photos(raw_dir: Path, count: int, seed: int = 1) -> list[Path]:
    """A seeded sample of the raw photos (sorted, so the same files on every machine)."""
    photos = sorted(p for p in Path(raw_dir).rglob("*") if p.is_file() and not p.name.startswith("."))
    if count and not photos:
        raise FileNotFoundError(f"{raw_dir}: no raw photos to check the photo-in model on")
    picks = np.random.default_rng(seed).choice(len(photos), min(count, len(photos)), replace=False)
    return [photos[i] for i in sorted(picks)]


def run(params: Params) -> dict[str, Any]:
    p = params.publish
    name = check_model_name(p.model_name)
    if not Path(p.model).is_file():
        raise FileNotFoundError(f"{p.model}: model to publish not found (run the export stage)")
    lineage = file_lineage(params, Path(p.model))
    options = serving_options(p, lineage)
    pipeline = pipeline_spec(params)
    report: dict[str, Any] = {"model": str(p.model), "model_name": name, "backend": p.backend,
                              "lineage": lineage.manifest()}
    with timed(report), atomic_dir(p.candidate_dir) as tmp:
        report["version"], report["pipeline_version"] = push(LocalStore(tmp / "repository"), name, Path(p.model),
                                                             options, lineage, pipeline)
        if p.validate_with_triton:
            # Imported here: serving an approved model (flows/promotion.py) reuses this module every 30 s and
            # needs none of torch, ONNX Runtime or tritonclient's HTTP stack.
            from components.evaluation.embedders import OnnxEmbedder, to_input
            from components.export.faces import sample_faces
            from components.serving.validation import infra_validate

            inputs = to_input(sample_faces(params.pack.out_dir, p.validation_faces, seed=1))
            reference = OnnxEmbedder(p.model).session.run(None, {"input": inputs})[0]
            with tempfile.TemporaryDirectory() as work:
                photos = validation_photos(params.data.raw_dir, p.validation_photos) if pipeline else []
                report["infra_validation"] = infra_validate(Path(p.model), name, options, inputs, reference,
                                                            Path(work), p.max_abs_diff, pipeline, photos)
    write_report(STAGE, report)
    return report
