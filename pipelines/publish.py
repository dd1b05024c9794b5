"""DVC stage ``publish``: a Triton repository, proven by a real Triton server.

The stage writes the candidate repository (``publish.candidate_dir``, one version) with ``config.pbtxt``
generated from the ONNX graph, loads it in the bundled Triton (python-backend variant of the same ONNX, the
backend that Triton build has), checks HTTP and gRPC answers against ONNX Runtime, and -- only then, and only
when ``publish.target`` is set -- pushes it as the next version of that repository (folder or S3). Serving the
approved model is ``faceforge promote``'s job (flows/serving.py), which reuses :func:`push`.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from components.evaluation.embedders import OnnxEmbedder, to_input
from components.export.faces import sample_faces
from components.io.atomic import atomic_dir
from components.io.raw_folder import sha256_file
from components.serving.repository import check_model_name, publish_onnx
from components.serving.store import LocalStore, open_store
from components.serving.triton_config import ServingOptions
from components.serving.validation import infra_validate
from pipelines.common import REPORTS, timed, write_report
from pipelines.params import Params, PublishParams

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


def lineage(params: Params, onnx_path: Path) -> dict[str, str]:
    metrics: dict[str, Any] = {}
    eval_report = REPORTS / "eval.json"
    if eval_report.is_file():
        report = json.loads(eval_report.read_text())
        ijbc = report.get(params.eval.ijbc_target, {})
        metrics = {k: v for k, v in ijbc.items() if k.startswith("tar_at_far") and v is not None}
        metrics |= {f"{n}.accuracy": m["accuracy"] for n, m in report.get("verification", {}).items()}
    return {"git_revision": _git_revision(), "dvc_data_hash": _data_hash(params),
            "mlflow_run_id": os.environ.get("MLFLOW_RUN_ID", ""), "model_sha256": sha256_file(onnx_path),
            "metrics": json.dumps(metrics, sort_keys=True)}


def serving_options(p: PublishParams, lineage_tags: dict[str, str]) -> ServingOptions:
    return ServingOptions(backend=p.backend, max_batch_size=p.max_batch_size,
                          preferred_batch_sizes=tuple(p.preferred_batch_sizes), max_queue_delay_us=p.max_queue_delay_us,
                          instance_kind=p.instance_kind, instance_count=p.instance_count, tensorrt=p.tensorrt,
                          tensorrt_precision=p.tensorrt_precision, lineage=lineage_tags)


def push(target: str, name: str, onnx_path: Path, options: ServingOptions, metadata: dict[str, Any]) -> dict[str, Any]:
    """Publish ``onnx_path`` as the next version in ``target`` and serve it."""
    version = publish_onnx(open_store(target), name, onnx_path, options, metadata)
    return {"target": target, "model_name": name, "version": version}


def run(params: Params) -> dict[str, Any]:
    p = params.publish
    name = check_model_name(p.model_name)
    if not Path(p.model).is_file():
        raise FileNotFoundError(f"{p.model}: model to publish not found (run the export stage)")
    tags = lineage(params, Path(p.model))
    options = serving_options(p, tags)
    report: dict[str, Any] = {"model": str(p.model), "model_name": name, "backend": p.backend, "lineage": tags}
    with timed(report), atomic_dir(p.candidate_dir) as tmp:
        publish_onnx(LocalStore(tmp / "repository"), name, Path(p.model), options, {"lineage": tags})
        if p.validate_with_triton:
            inputs = to_input(sample_faces(params.pack.out_dir, p.validation_faces, seed=1))
            reference = OnnxEmbedder(p.model).session.run(None, {"input": inputs})[0]
            with tempfile.TemporaryDirectory() as work:
                report["infra_validation"] = infra_validate(Path(p.model), name, options, inputs, reference,
                                                            Path(work), p.max_abs_diff)
    if p.target:
        report["published"] = push(p.target, name, Path(p.model), options, {"lineage": tags})
    write_report(STAGE, report)
    return report

