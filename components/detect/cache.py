"""Content-addressed detection cache: results keyed by (file sha256, detector fingerprint).

Adding 10 photos to 100k re-detects only the 10; renaming or moving a photo costs nothing; changing the
model or a decoding setting changes the fingerprint and starts a fresh table. File hashes themselves are
memoised by (path, size, mtime) so an unchanged folder is not re-read either.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from components.io.atomic import atomic_path
from components.io.checksums import sha256_file
from components.io.raw_folder import RawImage

RESULT_COLUMNS = ["sha256", "status", "detail", "width", "height", "bbox", "landmarks", "score", "n_faces"]


class DetectionCache:
    def __init__(self, folder: Path, fingerprint: str) -> None:
        self.folder = Path(folder)
        self.results_path = self.folder / f"detections-{fingerprint}.parquet"
        self.hashes_path = self.folder / "hashes.parquet"

    def hash_images(self, root: Path, images: list[RawImage]) -> list[str]:
        known: dict[tuple[str, int, int], str] = {}
        if self.hashes_path.exists():
            memo = pd.read_parquet(self.hashes_path)
            known = {(p, int(s), int(m)): h for p, s, m, h in memo.itertuples(index=False)}
        hashes = [known.get((im.path, im.size, im.mtime_ns)) or sha256_file(root / im.path) for im in images]
        frame = pd.DataFrame({"path": [i.path for i in images], "size": [i.size for i in images],
                              "mtime_ns": [i.mtime_ns for i in images], "sha256": hashes})
        with atomic_path(self.hashes_path) as tmp:
            frame.to_parquet(tmp, index=False)
        return hashes

    def load(self) -> dict[str, dict[str, Any]]:
        if not self.results_path.exists():
            return {}
        frame = pd.read_parquet(self.results_path)
        return {row["sha256"]: row for row in _records(frame)}

    def save(self, results: dict[str, dict[str, Any]]) -> None:
        frame = pd.DataFrame(list(results.values()), columns=RESULT_COLUMNS)
        with atomic_path(self.results_path) as tmp:
            frame.to_parquet(tmp, index=False)


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    rows = frame.to_dict("records")
    for row in rows:  # parquet gives numpy arrays back for list columns
        for key in ("bbox", "landmarks"):
            if row[key] is not None:
                row[key] = [float(v) for v in row[key]]
    return rows
