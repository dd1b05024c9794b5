"""DVC stage ``quantize``: FP32 ONNX -> static INT8 (QDQ), and the verdict on which of the two to serve.

Both models are evaluated with the eval stage's own protocol and held-out sets (``eval.ijbc_root``,
``eval.verification``; FP32's figures and features are the eval stage's when it evaluated the same file, as with
``eval.model: data/export/model.onnx``), their embeddings of the eval faces are compared (mean cosine), and their
throughput is measured side by side on the same faces (``speed_batches``, ``speed_threads``). INT8 is served only
when it stays within ``quantize.max_accuracy_drop`` / ``max_tar_drop`` / ``min_cosine`` **and** is at least
``quantize.min_speedup`` times as fast as FP32 at every measured batch size; otherwise FP32 is, and
``reports/quantize.json`` says why (``serve``, ``serve_reasons``). The chosen variant is written as
``<out_dir>/model.onnx`` (``publish.model``'s default), next to ``model.int8.onnx``.
An INT8 model that is slower or less accurate is a verdict, not a failure: the stage succeeds and FP32 is served.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from components.evaluation.embedders import Embedder, OnnxEmbedder
from components.evaluation.roc import rate_key
from components.export import agreement, quantize_int8
from components.export.faces import sample_faces
from components.export.speed import compare_throughput
from components.io.atomic import atomic_dir
from components.io.checksums import sha256_file
from pipelines.common import REPORTS, timed, write_report
from pipelines.eval import evaluate_bin_set, evaluate_ijbc_set, ijbc_options
from pipelines.params import Params

STAGE = "quantize"


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


def _fp32_from_eval(params: Params, model: Path) -> tuple[dict[str, Any], np.ndarray] | None:
    """The eval stage's own measurement of ``model`` (same file, same eval params: the params file is shared),
    when it ran on it and kept its IJB features; else None and the FP32 model is measured here."""
    report_path, features = REPORTS / "eval.json", params.eval.out_dir / "ijbc" / "features.npy"
    if not report_path.is_file():
        return None
    evaluated = json.loads(report_path.read_text())
    if evaluated.get("model_sha256") != sha256_file(model):
        return None
    metrics = {"verification": evaluated["verification"]}
    if params.eval.ijbc_root is None:
        return metrics, np.empty((0, 0), np.float32)
    if not features.is_file() or params.eval.ijbc_target not in evaluated:
        return None
    return metrics | {"ijbc": evaluated[params.eval.ijbc_target]}, np.load(features)


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


def _speed(fp32: Path, int8: Path, faces: np.ndarray, params: Params) -> tuple[dict[str, Any], list[str]]:
    """Images/s of both variants per batch size, INT8's speed-up, and why it is too slow to serve (if it is)."""
    q = params.quantize
    measured = compare_throughput({"fp32": fp32, "int8": int8}, faces, tuple(q.speed_batches), q.speed_threads,
                                  q.speed_seconds)
    speedup = {batch: round(v["int8"] / v["fp32"], 3) for batch, v in measured.items()}
    slow = [f"INT8 is {s:.2f}x FP32's throughput at batch {batch} (< quantize.min_speedup {q.min_speedup})"
            for batch, s in speedup.items() if s < q.min_speedup]
    return {"threads": q.speed_threads, "images_per_s": measured, "int8_speedup": speedup}, slow


def run(params: Params) -> dict[str, Any]:
    q = params.quantize
    report: dict[str, Any] = {"model": str(q.model)}
    with timed(report), atomic_dir(q.out_dir) as tmp:
        faces = sample_faces(params.pack.out_dir, q.calibration_faces, q.seed)
        int8_path = tmp / "model.int8.onnx"
        report["quantization"] = quantize_int8(Path(q.model), int8_path, faces, q.method, q.per_channel,
                                               q.keep_edges_float, decompose_prelu=q.decompose_prelu)
        fp32, fp32_feats = _fp32_from_eval(params, Path(q.model)) or _measure(OnnxEmbedder(q.model), params)
        int8, int8_feats = _measure(OnnxEmbedder(int8_path), params)
        report.update(fp32=fp32, int8=int8)
        if not fp32_feats.size:  # no IJB set: the calibration faces stand in for the eval faces
            fp32_feats, int8_feats = OnnxEmbedder(q.model)(faces), OnnxEmbedder(int8_path)(faces)
        report["embedding_agreement"] = agreement(fp32_feats, int8_feats)
        report["drop"], reasons = _drops(fp32, int8, params)
        if (cosine := report["embedding_agreement"]["mean_cosine"]) < q.min_cosine:
            reasons.append(f"INT8 embeddings' mean cosine to FP32's is {cosine:.4f} < quantize.min_cosine "
                           f"{q.min_cosine}: thresholds calibrated on one would not hold for the other")
        report["speed"], slow = _speed(Path(q.model), int8_path, faces, params)
        serve = "fp32" if reasons or slow else "int8"
        why = reasons + slow if serve == "fp32" else [
            f"INT8 within the accuracy limits and {min(report['speed']['int8_speedup'].values()):.2f}x FP32's "
            f"throughput (>= quantize.min_speedup {q.min_speedup})"]
        shutil.copyfile(int8_path if serve == "int8" else q.model, tmp / "model.onnx")
        report.update(passed=not reasons, reasons=reasons, serve=serve, serve_reasons=why,
                      sha256={"fp32": sha256_file(q.model), "int8": sha256_file(int8_path)})
    write_report(STAGE, report)
    return report
