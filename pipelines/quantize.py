"""DVC stage ``quantize``: FP32 ONNX -> static INT8 (QDQ), with the accuracy it costs measured and enforced.

Both models are evaluated with the eval stage's own protocol and held-out sets (``eval.ijbc_root``,
``eval.verification``). A drop beyond ``quantize.max_accuracy_drop`` / ``max_tar_drop`` fails the stage:
``reports/quantize.json`` then records ``passed: false`` and the reasons (the promotion gate reads it), and the
previous ``quantize.out_dir`` is left as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components.evaluation.embedders import Embedder, OnnxEmbedder
from components.evaluation.roc import rate_key
from components.export import agreement, quantize_int8
from components.export.faces import sample_faces
from components.io.atomic import atomic_dir
from components.io.checksums import sha256_file
from pipelines.common import timed, write_report
from pipelines.eval import evaluate_bin_set, evaluate_ijbc_set, ijbc_options
from pipelines.params import Params

STAGE = "quantize"


class QuantizationRejected(RuntimeError):
    """INT8 lost more accuracy than the params allow."""


def _measure(embedder: Embedder, params: Params) -> tuple[dict[str, Any], np.ndarray]:
    """Eval metrics on the held-out sets and the per-image IJB features (for the cosine comparison)."""
    e = params.eval
    options = ijbc_options(e)
    metrics: dict[str, Any] = {"verification": {name: evaluate_bin_set(path, embedder, options, e.folds)[0]
                                                for name, path in e.verification.items()}}
    features = np.empty((0, 0), np.float32)
    if e.ijbc_root is not None:
        metrics["ijbc"], _, arrays = evaluate_ijbc_set(e.ijbc_root, e.ijbc_target, options, embedder, None)
        features = arrays["features"]
    return metrics, features


def _drops(fp32: dict[str, Any], int8: dict[str, Any], params: Params) -> tuple[dict[str, float], list[str]]:
    q = params.quantize
    drops: dict[str, float] = {}
    reasons: list[str] = []
    for name, m in fp32["verification"].items():
        drop = m["accuracy"] - int8["verification"][name]["accuracy"]
        drops[f"{name}.accuracy"] = round(drop, 6)
        if drop > q.max_accuracy_drop:
            reasons.append(f"{name} accuracy drops {drop:.4f} > quantize.max_accuracy_drop {q.max_accuracy_drop}")
    if "ijbc" in fp32:
        key = rate_key("tar_at_far", q.far)
        before, after = fp32["ijbc"].get(key), int8["ijbc"].get(key)
        if before is None or after is None:
            reasons.append(f"IJB {key} is not measurable on {params.eval.ijbc_root} (too few impostor pairs)")
        else:
            drops[f"ijbc.{key}"] = round(before - after, 6)
            if before - after > q.max_tar_drop:
                reasons.append(f"IJB {key} drops {before - after:.4f} > quantize.max_tar_drop {q.max_tar_drop}")
    return drops, reasons


def run(params: Params) -> dict[str, Any]:
    q = params.quantize
    report: dict[str, Any] = {"model": str(q.model)}
    try:
        with timed(report), atomic_dir(q.out_dir) as tmp:
            faces = sample_faces(params.pack.out_dir, q.calibration_faces, q.seed)
            int8_path = tmp / "model.int8.onnx"
            report["quantization"] = quantize_int8(Path(q.model), int8_path, faces, q.method, q.per_channel,
                                                   q.keep_edges_float)
            fp32, fp32_feats = _measure(OnnxEmbedder(q.model), params)
            int8, int8_feats = _measure(OnnxEmbedder(int8_path), params)
            report.update(fp32=fp32, int8=int8)
            if fp32_feats.size:
                report["embedding_agreement"] = agreement(fp32_feats, int8_feats)
            report["drop"], reasons = _drops(fp32, int8, params)
            report.update(passed=not reasons, reasons=reasons, sha256={"fp32": sha256_file(q.model),
                                                                       "int8": sha256_file(int8_path)})
            if reasons:
                raise QuantizationRejected("; ".join(reasons))
    except QuantizationRejected as exc:
        write_report(STAGE, report)  # the gate must see a rejected INT8 model, not a stale success
        raise RuntimeError(f"INT8 model rejected: {exc}") from None
    write_report(STAGE, report)
    return report
