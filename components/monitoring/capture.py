"""A window of live traffic: what the photo-in model answered, kept for the drift check (docs/monitoring.md).

Prometheus holds counts and histograms, enough to alert; a two-sample test needs the values themselves. The
photo-in model (``faceforge-pipeline``) appends one row per answered photo (time, version, status, faces found,
the quality measures and the embedding of an embedded face) and writes them in chunks under the capture folder
(``FACEFORGE_CAPTURE`` in Triton's environment; ``faceforge triton --capture``):
``<capture>/<version>/<first row's time in ms>-<pid>-<n>.npz``, written to a temporary name and renamed, so a
reader never sees half a chunk. A chunk is written when it holds ``FLUSH_ROWS`` rows, when its first row is
``FLUSH_S`` seconds old (checked at each request), and when the model unloads.

Embeddings are biometric data: the capture holds no photo, crop or name, and chunks older than
``monitoring.capture_retention_days`` are deleted (by the writer as it writes, and by the drift flow). numpy and
the standard library only: this module ships into Triton.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MEASURES = ("blur", "brightness", "yaw", "pitch", "interocular", "det_score")
FLUSH_ROWS = 256
FLUSH_S = 30.0


class CaptureWriter:
    """Rows of one model instance, written in chunks under ``root/version``."""

    def __init__(self, root: str | Path, version: str, embedding_size: int,
                 retention_days: float | None = None) -> None:
        """``retention_days``: chunks older than this are deleted at each write, whether or not a drift flow
        runs (it deletes them too): a served model left running never keeps embeddings longer."""
        self.folder, self.size = Path(root) / version, embedding_size
        self.retention_s = retention_days * 86400 if retention_days else None
        self._rows: list[tuple[float, str, int, list[float], np.ndarray | None]] = []
        self._chunks = 0

    def add(self, when: float, status: str, faces: int, measures: dict[str, float],
            embedding: np.ndarray | None) -> None:
        self._rows.append((when, status, faces, [measures.get(m, np.nan) for m in MEASURES], embedding))

    def maybe_flush(self) -> None:
        if self._rows and (len(self._rows) >= FLUSH_ROWS or time.time() - self._rows[0][0] >= FLUSH_S):
            self.flush()

    def flush(self) -> None:
        if not self._rows:
            return
        rows, self._rows = self._rows, []
        embeddings = np.zeros((len(rows), self.size), np.float32)
        for i, row in enumerate(rows):
            if row[4] is not None:
                embeddings[i] = row[4]
        self.folder.mkdir(parents=True, exist_ok=True)
        self._chunks += 1
        target = self.folder / f"{int(rows[0][0] * 1000)}-{os.getpid()}-{self._chunks}.npz"
        partial = target.with_name(target.name + ".partial")
        with partial.open("wb") as f:
            np.savez(f, time=np.array([r[0] for r in rows]), status=np.array([r[1] for r in rows]),
                     faces=np.array([r[2] for r in rows], np.int32),
                     measures=np.array([r[3] for r in rows], np.float32), embeddings=embeddings)
        os.replace(partial, target)
        if self.retention_s is not None:
            expire(self.folder.parent, time.time() - self.retention_s)


@dataclass(frozen=True)
class Window:
    """The captured rows of one served version between two times; embedded faces' measures and embeddings."""

    version: str
    since: float
    until: float
    photos: int
    status: dict[str, int]
    measures: dict[str, np.ndarray]  # embedded faces only
    embeddings: np.ndarray  # [faces, d], L2-normalised

    @property
    def faces(self) -> int:
        return len(self.embeddings)

    def summary(self) -> dict[str, Any]:
        return {"version": self.version, "since": self.since, "until": self.until, "photos": self.photos,
                "faces": self.faces, "status": self.status}


def _first_time(chunk: Path) -> float:
    """A chunk's first row's time, from its name (``<ms>-<pid>-<n>.npz``): no file is opened to select it."""
    return int(chunk.name.split("-", 1)[0]) / 1000


def _chunks(folder: Path, until: float) -> Iterable[Path]:
    """Chunks whose first row is before ``until``: a chunk's rows may span longer than ``FLUSH_S`` (an idle
    instance flushes at its next request), so rows are filtered by their own times."""
    for path in sorted(folder.glob("*.npz")):
        if _first_time(path) < until:
            yield path


def versions(root: str | Path) -> list[str]:
    """Versions with captured traffic."""
    base = Path(root)
    return sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else []


def read_window(root: str | Path, version: str, since: float, until: float) -> Window:
    """The rows of ``version`` with ``since <= time < until``."""
    status: dict[str, int] = {}
    measures: list[np.ndarray] = []
    embeddings: list[np.ndarray] = []
    photos = 0
    for path in _chunks(Path(root) / version, until):
        with np.load(path) as chunk:
            keep = (chunk["time"] >= since) & (chunk["time"] < until)
            if not keep.any():
                continue
            photos += int(keep.sum())
            for name, count in zip(*np.unique(chunk["status"][keep], return_counts=True), strict=True):
                status[str(name)] = status.get(str(name), 0) + int(count)
            ok = keep & (chunk["status"] == "ok")
            measures.append(chunk["measures"][ok])
            embeddings.append(chunk["embeddings"][ok])
    table = np.concatenate(measures) if measures else np.zeros((0, len(MEASURES)), np.float32)
    size = embeddings[0].shape[1] if embeddings else 0
    return Window(version, since, until, photos, status, {m: table[:, i] for i, m in enumerate(MEASURES)},
                  np.concatenate(embeddings) if embeddings else np.zeros((0, size), np.float32))


def expire(root: str | Path, before: float) -> int:
    """Delete chunks whose first row is older than ``before`` (retention); returns how many."""
    removed = 0
    for path in Path(root).glob("*/*.npz"):
        if _first_time(path) < before - FLUSH_S:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


def capture_rows(writer: CaptureWriter | None, when: float, faces: Sequence[Any],
                 embeddings: Sequence[np.ndarray | None]) -> None:
    """Append one execute's answers (``PhotoFace``s and their embeddings, ``None`` where none) to ``writer``."""
    if writer is None:
        return
    for face, embedding in zip(faces, embeddings, strict=True):
        writer.add(when, face.status, face.faces, face.measures, embedding)
    writer.maybe_flush()
