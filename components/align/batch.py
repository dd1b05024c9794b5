"""Align each detected face: the per-process worker the executor runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from components.align.similarity import align_face
from components.io.images import ImageRejected, read_rgb
from components.quality.measures import interocular


@dataclass(frozen=True)
class AlignJob:
    raw_root: Path
    out_root: Path
    image_size: int
    jpeg_quality: int
    max_pixels: int


class AlignWorker:
    def __init__(self, job: AlignJob) -> None:
        self.job = job

    def _one(self, item: dict[str, Any]) -> dict[str, Any]:
        landmarks = np.asarray(item["landmarks"], dtype=np.float64).reshape(5, 2)
        try:
            rgb = read_rgb(self.job.raw_root / item["path"], self.job.max_pixels, item["path"])
            crop, mapped = align_face(rgb, landmarks, self.job.image_size)
        except ImageRejected as exc:
            return {"status": exc.reason, "detail": exc.detail}
        except ValueError as exc:
            return {"status": "align_failed", "detail": f"{item['path']}: {exc}"}
        # Content-addressed name: unique even when a.jpg and a.png share a stem, stable across reruns.
        rel = f"{item['identity']}/{item['sha256'][:20]}.jpg"
        target = self.job.out_root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, self.job.jpeg_quality])
        if not ok:
            return {"status": "encode_failed", "detail": f"{item['path']}: JPEG encoding failed"}
        target.write_bytes(buf.tobytes())
        return {"status": "ok", "detail": "", "aligned_path": rel,
                "aligned_landmarks": mapped.reshape(-1).tolist(),
                "interocular": interocular(landmarks)}

    def __call__(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._one(item) for item in items]
