"""What a version's live traffic is compared with: its reference distributions, kept when it is evaluated.

- ``measures`` and ``embeddings``: held-out people's raw photos through the served path itself (the photo-in
  model's detect + align code, components/serving/photo.py, and the evaluated embedder), so clean traffic of
  such people is, by construction, a sample of the same distribution: the drift tests' false-alarm rate is then
  the rate they promise (measured in tests/test_drift.py, not assumed).
- ``training_measures``: the training faces' quality measures (the quality stage's table): what the model learned
  from, shown next to both in the drift report.
- ``genuine`` / ``impostor`` and ``thresholds``: the held-out IJB-format set's template-pair scores and the served
  thresholds: where the served threshold sits between them, plotted against the live pairs' scores.

One ``.npz`` in the eval stage's output (``data/eval/reference.npz``), logged with the version's MLflow run.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from components.monitoring.capture import MEASURES

IMPOSTOR_SCORES = 20_000  # kept of the impostor pairs (a real IJB-C has 15.6 M): plenty for a histogram


@dataclass(frozen=True)
class Reference:
    measures: dict[str, np.ndarray]
    embeddings: np.ndarray  # [faces, d], L2-normalised
    training_measures: dict[str, np.ndarray]
    genuine: np.ndarray
    impostor: np.ndarray
    thresholds: dict[str, float | None]  # "far_1e-4" -> cosine
    photos: int
    source: dict[str, Any] = field(default_factory=dict)  # where it came from: model checksum, photo folder

    @property
    def faces(self) -> int:
        return len(self.embeddings)

    def save(self, path: Path) -> None:
        arrays = {f"measure_{m}": v for m, v in self.measures.items()}
        arrays |= {f"training_{m}": v for m, v in self.training_measures.items()}
        meta = {"thresholds": self.thresholds, "photos": self.photos, "source": self.source}
        buffer = io.BytesIO()
        np.savez_compressed(buffer, embeddings=self.embeddings, genuine=self.genuine, impostor=self.impostor,
                            meta=np.array(json.dumps(meta)), **arrays)
        path.write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> Reference:
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            return cls({m: data[f"measure_{m}"] for m in MEASURES}, data["embeddings"],
                       {m: data[f"training_{m}"] for m in MEASURES if f"training_{m}" in data},
                       data["genuine"], data["impostor"], meta["thresholds"], int(meta["photos"]), meta["source"])

    def summary(self) -> dict[str, Any]:
        return {"photos": self.photos, "faces": self.faces, "training_faces": len(next(
            iter(self.training_measures.values()), [])), "genuine_pairs": len(self.genuine),
            "impostor_pairs": len(self.impostor), **self.source}


def served_path_faces(photos: Iterable[tuple[str, bytes]], faces: Callable[[bytes, str], Any],
                      embed: Callable[[np.ndarray], np.ndarray], limit: int,
                      batch: int = 64) -> tuple[int, dict[str, np.ndarray], np.ndarray]:
    """(photos read, measures, embeddings) of up to ``limit`` faces: each photo as the photo-in model answers
    it (``faces``: a :class:`~components.serving.photo.PhotoFaces`), the crops embedded by ``embed``."""
    rows: list[list[float]] = []
    crops: list[np.ndarray] = []
    read = 0
    for name, data in photos:
        if len(crops) >= limit:
            break
        read += 1
        face = faces(data, name)
        if face.status == "ok":
            rows.append([face.measures[m] for m in MEASURES])
            crops.append(face.crop)
    if not crops:
        raise ValueError("no face found in any reference photo: the served path would embed nothing either")
    embeddings = np.concatenate([embed(np.stack(crops[i:i + batch])) for i in range(0, len(crops), batch)])
    embeddings /= np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    table = np.asarray(rows, np.float32)
    return read, {m: table[:, i] for i, m in enumerate(MEASURES)}, embeddings.astype(np.float32)


def training_measures(quality_table: Any) -> dict[str, np.ndarray]:
    """The quality stage's measures of every training face it measured (kept or filtered out: live traffic is
    not filtered either)."""
    table = quality_table.rename(columns={"score": "det_score"})
    table = table[table.blur.notna()]
    return {m: table[m].to_numpy(np.float32) for m in MEASURES}


def sample_impostors(impostor: np.ndarray, seed: int = 0) -> np.ndarray:
    if len(impostor) <= IMPOSTOR_SCORES:
        return impostor.astype(np.float32)
    return np.random.default_rng(seed).choice(impostor, IMPOSTOR_SCORES, replace=False).astype(np.float32)
