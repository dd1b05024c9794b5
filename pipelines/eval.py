"""DVC stage ``eval`` and ``faceforge eval ijbc``: IJB-C 1:1 / 1:N and ``.bin`` verification sets.

Everything is computed before anything is written; outputs then appear as one folder (``eval.out_dir``) and
``reports/eval.json`` last, so a failed evaluation leaves the previous results and reports untouched.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from components.evaluation.ijbc import Features, IjbcOptions, evaluate_ijbc
from components.evaluation.ijbc_meta import read_ijbc_meta
from components.evaluation.plots import plot_roc, tar_far_markdown, write_roc_csv
from components.evaluation.roc import roc_points, roc_summary, split_scores
from components.io.atomic import atomic_dir, write_json
from components.io.checksums import sha256_file
from components.io.npy_rows import NpyRows
from components.monitoring.reference import Reference, sample_impostors, served_path_faces, training_measures
from pipelines.common import timed, write_report
from pipelines.params import EvalParams, Params

if TYPE_CHECKING:  # torch and OpenCV are imported only where a model embeds images: `--features` runs skip them
    from components.evaluation.embedders import Embedder

STAGE = "eval"
Curve = tuple[np.ndarray, np.ndarray]


def ijbc_options(p: EvalParams) -> IjbcOptions:
    return IjbcOptions(flip=p.flip, detector_score=p.detector_score, normalise_images=p.normalise_images,
                       fars=tuple(p.fars), fpirs=tuple(p.fpirs), threshold_fars=tuple(p.threshold_fars),
                       batch_size=p.batch_size, loader_workers=p.loader_workers)


def evaluate_ijbc_set(root: Path, target: str, options: IjbcOptions, embedder: Embedder | None,
                      features_path: Path | None) -> tuple[dict[str, Any], Curve, dict[str, np.ndarray]]:
    """Metrics, ROC curve and the arrays worth keeping (scores, and features when they were computed here)."""
    meta = read_ijbc_meta(root, target, need_images=features_path is None)
    arrays: dict[str, np.ndarray] = {}
    start = time.perf_counter()
    features: Features
    if features_path is not None:
        features, source = NpyRows(features_path), str(features_path)
    else:
        from components.evaluation.ijbc_images import embed_ijbc_images

        assert embedder is not None
        features = arrays["features"] = embed_ijbc_images(meta, embedder, options)
        source = "model embeddings"
    embed_s = time.perf_counter() - start
    result = evaluate_ijbc(meta, features, options, source)
    arrays["scores"] = result.scores
    arrays["labels"] = meta.pair_label  # 1 = same person: what a score file means
    metrics = result.metrics() | {"images": len(meta.images), "templates": len(np.unique(meta.templates)),
                                  "pairs": len(meta.pair_label)}
    metrics["timings"] = result.timings | {"embed_s": round(embed_s, 3)}
    if features_path is None:
        metrics["embed_images_per_s"] = round(len(meta.images) / max(embed_s, 1e-9), 2)
    return metrics, result.roc, arrays


def evaluate_bin_set(path: Path, embedder: Embedder, options: IjbcOptions, folds: int) -> tuple[dict[str, Any], Curve]:
    from components.evaluation.embedders import embed_batches
    from components.evaluation.verification import kfold_accuracy, load_bin

    dataset = load_bin(path)
    batches = (dataset.images[i:i + options.batch_size] for i in range(0, len(dataset.images), options.batch_size))
    feats = embed_batches(embedder, batches, len(dataset.images), flip=options.flip)
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    if not np.isfinite(feats).all() or (norms == 0).any():
        raise ValueError(f"{path}: the model produced NaN, Inf or all-zero embeddings")
    feats /= norms
    scores = np.einsum("ij,ij->i", feats[0::2], feats[1::2])
    accuracy, accuracy_std, threshold = kfold_accuracy(scores, dataset.issame, folds)
    genuine, impostor = split_scores(scores, dataset.issame)
    metrics: dict[str, Any] = {"accuracy": round(accuracy, 6), "accuracy_std": round(accuracy_std, 6),
                               "threshold": round(threshold, 6), "pairs": len(scores)}
    metrics |= roc_summary(genuine, impostor, options.fars).as_metrics()
    return metrics, roc_points(genuine, impostor)


def _write_curves(out_dir: Path, curves: dict[str, Curve], fars: tuple[float, ...],
                  rows: dict[str, dict[str, Any]]) -> None:
    for name, (far, tar) in curves.items():
        positive = far > 0  # log axis
        write_roc_csv(out_dir / "roc" / f"{name}.csv", far[positive], tar[positive])
    plot_roc(curves, fars, out_dir / "roc.png")
    extra = {"accuracy": "10-fold acc."} if any("accuracy" in r for r in rows.values()) else None
    (out_dir / "tar_far.md").write_text(tar_far_markdown(rows, fars, extra))


def _load_embedder(model: Path) -> Embedder:
    from components.evaluation.embedders import load_embedder

    return load_embedder(model)


def run(params: Params) -> dict[str, Any]:
    p = params.eval
    options = ijbc_options(p)
    report: dict[str, Any] = {"model": str(p.model),
                              "model_sha256": sha256_file(p.model) if p.model.is_file() else None}
    curves: dict[str, Curve] = {}
    scores: tuple[np.ndarray, np.ndarray] | None = None  # the held-out set's genuine and impostor pair scores
    with timed(report), atomic_dir(p.out_dir) as tmp:
        needs_model = (bool(p.verification) or p.ijbc_hard_root is not None
                       or (p.ijbc_root is not None and p.ijbc_features is None))
        embedder = _load_embedder(p.model) if needs_model else None
        if p.ijbc_root is not None:
            metrics, curves[p.ijbc_target], arrays = evaluate_ijbc_set(p.ijbc_root, p.ijbc_target, options,
                                                                      embedder, p.ijbc_features)
            scores = split_scores(arrays["scores"], arrays["labels"])
            (tmp / "ijbc").mkdir()
            np.save(tmp / "ijbc" / "scores.npy", arrays["scores"])
            if p.save_features and "features" in arrays:
                np.save(tmp / "ijbc" / "features.npy", arrays["features"])
            report[p.ijbc_target] = metrics
        hard = f"{p.ijbc_target}_hard"
        if p.ijbc_hard_root is not None:  # the same people, degraded: where good models differ (the gate's set)
            report[hard], curves[hard], _ = evaluate_ijbc_set(p.ijbc_hard_root, p.ijbc_target, options, embedder,
                                                              None)
        report["verification"] = {}
        for name, path in p.verification.items():
            assert embedder is not None
            report["verification"][name], curves[name] = evaluate_bin_set(path, embedder, options, p.folds)
        rows = {k: report[k] for k in (p.ijbc_target, hard) if k in report}
        _write_curves(tmp, curves, options.fars, rows | report["verification"])
        if p.reference_photos is not None and embedder is not None:
            reference = build_reference(params, embedder, report.get(p.ijbc_target, {}), scores)
            reference.save(tmp / "reference.npz")
            report["reference"] = reference.summary()
    write_report(STAGE, report)
    return report


def build_reference(params: Params, embedder: Embedder, ijbc: dict[str, Any],
                    scores: tuple[np.ndarray, np.ndarray] | None) -> Reference:
    """The version's reference for the drift check (components/monitoring/reference.py): the held-out photos
    through the served path, the training faces' measures, the held-out pairs' scores and the thresholds."""
    import pandas as pd

    from components.serving.photo import PhotoFaces
    from pipelines.publish import photo_path

    p = params.eval
    assert p.reference_photos is not None
    files = sorted(f for f in p.reference_photos.rglob("*") if f.is_file())
    if not files:
        raise ValueError(f"{p.reference_photos}: no photos of held-out people for the drift reference "
                         "(eval.reference_photos: `faceforge sample` writes them; null keeps no reference)")
    faces = PhotoFaces(*photo_path(params))
    read, measures, embeddings = served_path_faces(((str(f), f.read_bytes()) for f in files), faces, embedder,
                                                   params.monitoring.reference_faces)
    quality = params.quality_filter.out_dir / "manifest.parquet"
    training = training_measures(pd.read_parquet(quality)) if quality.is_file() else {}
    genuine, impostor = scores if scores is not None else (np.zeros(0, np.float32), np.zeros(0, np.float32))
    thresholds = {far: t["cosine"] for far, t in ijbc.get("thresholds", {}).items()}
    return Reference(measures, embeddings, training, genuine.astype(np.float32), sample_impostors(impostor),
                     thresholds, read, {"photos_dir": str(p.reference_photos), "model": str(p.model)})


def run_ijbc(root: Path, out_dir: Path, target: str, options: IjbcOptions, model: Path | None,
             features: Path | None) -> dict[str, Any]:
    """``faceforge eval ijbc``: one IJB set to a standalone folder (``ijbc.json``, ROC, scores, features)."""
    if (model is None) == (features is None):
        raise ValueError("give exactly one of --model (embed the images) or --features (precomputed .npy)")
    embedder = _load_embedder(model) if model is not None else None
    metrics, curve, arrays = evaluate_ijbc_set(root, target, options, embedder, features)
    with atomic_dir(out_dir) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array)
        _write_curves(tmp, {target: curve}, options.fars, {target: metrics})
        write_json(tmp / f"{target}.json", metrics)
    return metrics
