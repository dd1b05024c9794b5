"""Measure each aligned face: the per-process worker the executor runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from components.io.images import ImageRejected, read_rgb
from components.quality.metrics import measure


class QualityWorker:
    def __init__(self, aligned_root: Path) -> None:
        self.root = Path(aligned_root)

    def _one(self, item: dict[str, Any]) -> dict[str, Any]:
        try:
            rgb = read_rgb(self.root / item["aligned_path"], 1 << 20, item["aligned_path"])
        except ImageRejected as exc:
            return {"measure_error": f"{exc.reason}: {exc.detail}"}
        return measure(rgb, np.asarray(item["aligned_landmarks"])).as_dict() | {"measure_error": ""}

    def __call__(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._one(item) for item in items]
