"""The IJB-B/IJB-C 1:1 verification and 1:N identification protocols, end to end.

1. Each loose crop is aligned with its given 5 points onto the ArcFace template and embedded together with its
   horizontal mirror (the two embeddings summed) -- or per-image features are taken from a file.
2. Each image feature is optionally L2-normalised and optionally multiplied by its detector score (the
   "N0/D1" test mode of InsightFace: unnormalised features weighted by face confidence, their default).
3. Features are pooled per media, then per template (mean of media means), and L2-normalised.
4. 1:1: cosine score per template pair, TAR at each FAR (rule in roc.py). 1:N: open-set identification against
   galleries G1 and G2 (rule in identification.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.evaluation.identification import identify
from components.evaluation.ijbc_meta import IjbcMeta, index_in
from components.evaluation.pairs import score_pairs
from components.evaluation.roc import (
    DECISION_FARS,
    DEFAULT_FARS,
    RocSummary,
    decision_thresholds,
    roc_points,
    roc_summary,
    split_scores,
)
from components.evaluation.templates import TemplatePooler, row_norms
from components.io.npy_rows import BLOCK_ROWS, NpyRows

Features = np.ndarray | NpyRows  # per-image features in memory, or a .npy file read block by block


@dataclass(frozen=True)
class IjbcOptions:
    flip: bool = True
    detector_score: bool = True
    normalise_images: bool = False
    fars: tuple[float, ...] = DEFAULT_FARS
    fpirs: tuple[float, ...] = (1e-2, 1e-1)
    threshold_fars: tuple[float, ...] = DECISION_FARS
    batch_size: int = 64
    loader_workers: int = 0


@dataclass
class IjbcResult:
    verification: RocSummary
    identification: dict[str, dict[str, float | None]]
    scores: np.ndarray  # float32 per pair, in the pair file's order
    roc: tuple[np.ndarray, np.ndarray]  # (FAR, TAR) points for plots
    timings: dict[str, float] = field(default_factory=dict)
    thresholds: dict[str, dict[str, float | int | None]] = field(default_factory=dict)  # decision_thresholds

    def metrics(self) -> dict[str, object]:
        out: dict[str, object] = dict(self.verification.as_metrics())
        out["thresholds"] = self.thresholds
        if self.identification:
            out["identification"] = self.identification
        return out


def check_features(features: Features, meta: IjbcMeta, source: Path | str) -> None:
    """Shape only: finiteness is checked block by block as the features are pooled (read once)."""
    list_file = meta.meta_path("name_5pts_score.txt")
    if len(features.shape) != 2:
        raise ValueError(f"{source}: expected a 2-D [images, dim] array, got shape {features.shape}")
    if len(features) != len(meta.images):
        raise ValueError(f"{source}: {len(features)} rows, but {list_file} lists {len(meta.images)} images "
                         "(one feature row per image, in that file's order)")


def _blocks(features: Features) -> Iterator[tuple[int, np.ndarray]]:
    if isinstance(features, NpyRows):
        yield from features.blocks()
    else:
        for start in range(0, len(features), BLOCK_ROWS):
            yield start, features[start:start + BLOCK_ROWS]


def template_features(meta: IjbcMeta, features: Features, options: IjbcOptions,
                       source: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """One pass over the image features: finiteness, per-image weights, pooling; (template ids, L2-normalised
    template features in the order of ``meta.template_ids``)."""
    list_file = meta.meta_path("name_5pts_score.txt").name
    pooler = TemplatePooler(meta.templates, meta.medias, features.shape[1])
    for start, block in _blocks(features):
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if bad.size:
            row = start + int(bad[0])
            raise ValueError(f"{source}: row {row} (image {meta.images[row]}, line {row + 1} of "
                             f"{list_file}) contains NaN or Inf")
        weights = np.ones(len(block), np.float64)
        if options.normalise_images:
            norms = row_norms(block).astype(np.float64)
            if (norms == 0).any():
                raise ValueError(f"image {meta.images[start + np.flatnonzero(norms == 0)[0]]} has an all-zero feature")
            weights /= norms
        if options.detector_score:
            weights *= meta.scores[start:start + len(block)]
        pooler.add(start, block, weights)
    return pooler.result()


def evaluate_ijbc(meta: IjbcMeta, features: Features, options: IjbcOptions = IjbcOptions(),
                  source: Path | str = "features") -> IjbcResult:
    check_features(features, meta, source)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    template_ids, template_feats = template_features(meta, features, options, source)
    timings["pool_s"] = time.perf_counter() - start

    start = time.perf_counter()
    scores = score_pairs(template_feats, *meta.pair_index)  # rows of template_ids == meta.template_ids
    timings["score_s"] = time.perf_counter() - start

    start = time.perf_counter()
    genuine, impostor = split_scores(scores, meta.pair_label)
    impostor.sort()  # one sort serves the summary and the curve
    summary = roc_summary(genuine, impostor, options.fars, impostor_sorted=True)
    roc = roc_points(genuine, impostor, impostor_sorted=True)
    thresholds = decision_thresholds(impostor, options.threshold_fars)
    timings["roc_s"] = time.perf_counter() - start

    start = time.perf_counter()
    identification: dict[str, dict[str, float | None]] = {}
    if meta.probes is not None:
        probe_idx, _ = index_in(meta.probes[0], template_ids)
        for name, (gallery_templates, gallery_subjects) in meta.galleries.items():
            gallery_idx, _ = index_in(gallery_templates, template_ids)
            # A template enrolled in the gallery is not also searched as a probe against it.
            keep = ~np.isin(meta.probes[0], gallery_templates)
            identification[name] = identify(template_feats[probe_idx[keep]], meta.probes[1][keep],
                                            template_feats[gallery_idx], gallery_subjects, fpirs=options.fpirs)
        identification["mean"] = _mean_over_galleries(identification)
    timings["identify_s"] = time.perf_counter() - start
    return IjbcResult(summary, identification, scores, roc, {k: round(v, 3) for k, v in timings.items()},
                      thresholds)


def _mean_over_galleries(per_gallery: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    keys = [k for k in next(iter(per_gallery.values())) if k.startswith(("rank", "tpir"))]
    out: dict[str, float | None] = {}
    for key in keys:
        values = [g[key] for g in per_gallery.values()]
        out[key] = None if any(v is None for v in values) else round(float(np.mean(values)), 6)
    return out
