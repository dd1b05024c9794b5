"""Detect the main face of each raw photo: the per-process worker the executor runs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.detect.factory import DetectorConfig, load_detector
from components.detect.select import pick_main_face
from components.io.images import ImageRejected, read_rgb


@dataclass(frozen=True)
class DetectJob:
    detector: DetectorConfig
    root: Path
    centre_weight: float
    max_pixels: int


def empty_result(status: str, detail: str = "") -> dict[str, Any]:
    return {"status": status, "detail": detail, "width": 0, "height": 0, "bbox": None, "landmarks": None,
            "score": 0.0, "n_faces": 0}


class DetectWorker:
    """Builds one onnxruntime session per process; maps ``{"path", "sha256"}`` items to detection rows."""

    def __init__(self, job: DetectJob) -> None:
        self.job = job
        self.detector = load_detector(job.detector)

    def _one(self, rel_path: str) -> dict[str, Any]:
        try:
            rgb = read_rgb(self.job.root / rel_path, self.job.max_pixels)
        except ImageRejected as exc:  # a row belongs to the bytes (cached by SHA-256), not to a file name
            return empty_result(exc.reason, exc.problem)
        height, width = rgb.shape[:2]
        faces = self.detector.detect(rgb)
        main = pick_main_face(faces, width, height, self.job.centre_weight)
        if main is None:
            row = empty_result("no_face", "no face above the score threshold")
            row.update(width=width, height=height)
            return row
        return {"status": "ok", "detail": "", "width": width, "height": height,
                "bbox": main.bbox.astype(float).tolist(),
                "landmarks": main.landmarks.reshape(-1).astype(float).tolist(),
                "score": main.score, "n_faces": len(faces)}

    def __call__(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [dict(self._one(item["path"]), sha256=item["sha256"]) for item in items]
