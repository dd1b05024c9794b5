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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import DataLoader, Dataset

from components.align.similarity import align_face
from components.evaluation.embedders import Embedder, embed_batches
from components.evaluation.identification import identify
from components.evaluation.ijbc_meta import IjbcMeta, index_in
from components.evaluation.pairs import score_pairs
from components.evaluation.roc import DEFAULT_FARS, RocSummary, roc_points, roc_summary, split_scores
from components.evaluation.templates import pool_templates, row_norms
from components.io.images import ImageRejected, read_rgb

MAX_PIXELS = 50_000_000


@dataclass(frozen=True)
class IjbcOptions:
    flip: bool = True
    detector_score: bool = True
    normalise_images: bool = False
    fars: tuple[float, ...] = DEFAULT_FARS
    fpirs: tuple[float, ...] = (1e-2, 1e-1)
    batch_size: int = 64
    loader_workers: int = 0


@dataclass
class IjbcResult:
    verification: RocSummary
    identification: dict[str, dict[str, float | None]]
    scores: np.ndarray  # float32 per pair, in the pair file's order
    roc: tuple[np.ndarray, np.ndarray]  # (FAR, TAR) points for plots
    timings: dict[str, float] = field(default_factory=dict)

    def metrics(self) -> dict[str, object]:
        out: dict[str, object] = dict(self.verification.as_metrics())
        if self.identification:
            out["identification"] = self.identification
        return out


class _LooseCrops(Dataset):
    """Reads and aligns one loose crop per item; picklable so DataLoader workers can share the work."""

    def __init__(self, meta: IjbcMeta) -> None:
        self.dir = meta.image_dir
        self.images = meta.images
        self.landmarks = meta.landmarks
        self.list_file = meta.meta_path("name_5pts_score.txt")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        path = self.dir / str(self.images[i])
        try:
            rgb = read_rgb(path, MAX_PIXELS)
            return align_face(rgb, self.landmarks[i].astype(np.float64))[0]
        except (ImageRejected, FileNotFoundError, ValueError) as exc:
            # An evaluation image cannot be skipped (the protocol would change), so stop with its name.
            raise ValueError(f"{path} (line {i + 1} of {self.list_file.name}): {exc}") from None


def _collate(batch: list[np.ndarray]) -> np.ndarray:
    return np.stack(batch)


def embed_ijbc_images(meta: IjbcMeta, embedder: Embedder, options: IjbcOptions) -> np.ndarray:
    """Per-image features [n_images, D] in the order of ``<target>_name_5pts_score.txt``."""
    if not meta.image_dir.is_dir():
        raise FileNotFoundError(f"{meta.image_dir}: loose_crop/ folder not found")
    loader = DataLoader(_LooseCrops(meta), batch_size=options.batch_size, num_workers=options.loader_workers,
                        collate_fn=_collate, shuffle=False)
    return embed_batches(embedder, loader, len(meta.images), flip=options.flip)


def check_features(features: np.ndarray, meta: IjbcMeta, source: Path | str) -> None:
    """Shape and finiteness, streamed in chunks so a memory-mapped 0.9 GB file is never loaded whole."""
    list_file = meta.meta_path("name_5pts_score.txt")
    if features.ndim != 2:
        raise ValueError(f"{source}: expected a 2-D [images, dim] array, got shape {features.shape}")
    if len(features) != len(meta.images):
        raise ValueError(f"{source}: {len(features)} rows, but {list_file} lists {len(meta.images)} images "
                         "(one feature row per image, in that file's order)")
    for start in range(0, len(features), 65536):
        bad = np.flatnonzero(~np.isfinite(np.asarray(features[start:start + 65536])).all(axis=1))
        if bad.size:
            row = start + int(bad[0])
            raise ValueError(f"{source}: row {row} (image {meta.images[row]}, line {row + 1} of "
                             f"{list_file.name}) contains NaN or Inf")


def _template_features(meta: IjbcMeta, features: np.ndarray, options: IjbcOptions) -> tuple[np.ndarray, np.ndarray]:
    weights = np.ones(len(features), np.float64)
    if options.normalise_images:
        norms = row_norms(features).astype(np.float64)
        if (norms == 0).any():
            raise ValueError(f"image {meta.images[np.flatnonzero(norms == 0)[0]]} has an all-zero feature")
        weights /= norms
    if options.detector_score:
        weights *= meta.scores
    return pool_templates(features, meta.templates, meta.medias, weights)


def evaluate_ijbc(meta: IjbcMeta, features: np.ndarray, options: IjbcOptions = IjbcOptions()) -> IjbcResult:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    template_ids, template_feats = _template_features(meta, features, options)
    timings["pool_s"] = time.perf_counter() - start

    start = time.perf_counter()
    scores = score_pairs(template_feats, *meta.pair_index)  # rows of template_ids == meta.template_ids
    timings["score_s"] = time.perf_counter() - start

    start = time.perf_counter()
    genuine, impostor = split_scores(scores, meta.pair_label)
    summary = roc_summary(genuine, impostor, options.fars)
    roc = roc_points(genuine, impostor)
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
    return IjbcResult(summary, identification, scores, roc, {k: round(v, 3) for k, v in timings.items()})


def _mean_over_galleries(per_gallery: dict[str, dict[str, float | None]]) -> dict[str, float | None]:
    keys = [k for k in next(iter(per_gallery.values())) if k.startswith(("rank", "tpir"))]
    out: dict[str, float | None] = {}
    for key in keys:
        values = [g[key] for g in per_gallery.values()]
        out[key] = None if any(v is None for v in values) else round(float(np.mean(values)), 6)
    return out
