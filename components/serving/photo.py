"""Photo bytes -> the main face, aligned: the detect and align stages' own code, one photo at a time.

The ``faceforge-pipeline`` Triton model runs this (each version ships a copy of it with its detector), the
serving benchmark runs it in-process as the direct baseline, and tests compare both with the DVC stages:
one implementation, so the served embedding of a raw photo is the pipeline's embedding of its aligned crop.
Nothing a client sends may raise out of here: every photo gets a status (see :data:`STATUSES`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from components.align.similarity import align_face
from components.detect.factory import DetectorConfig, load_detector
from components.detect.select import pick_main_face
from components.io.images import ImageRejected, decode_rgb
from components.quality.measures import face_measures, interocular

# ``bad_image``: the bytes are no photo we can read (its ``detail`` starts with the rejected.csv reason code:
# empty, not_image, corrupt, too_large); ``no_face``: decoded, no face above the detector's threshold;
# ``align_failed``: degenerate landmarks. Only ``ok`` carries an embedding.
STATUSES = ("ok", "no_face", "bad_image", "align_failed")


@dataclass(frozen=True)
class PhotoSettings:
    """The detect and align params the photo goes through (``detect.*``, ``align.image_size``)."""

    detector_kind: Literal["centerface", "insightface"]
    input_size: int
    score_threshold: float
    nms_threshold: float
    centre_weight: float
    max_pixels: int
    image_size: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PhotoFace:
    status: str
    detail: str = ""
    crop: np.ndarray | None = None  # uint8 [image_size, image_size, 3] RGB when status == "ok"
    bbox: np.ndarray = field(default_factory=lambda: np.zeros(4, np.float32))  # x1 y1 x2 y2, photo pixels
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros(10, np.float32))  # 5 x (x, y)
    score: float = 0.0
    faces: int = 0  # faces the detector found above its threshold (the main one is answered for)
    # quality_filter's measures of the face (components/quality/measures.py), for the served model's metrics
    quality: dict[str, float] = field(default_factory=dict)

    @property
    def measures(self) -> dict[str, float]:
        """The quality measures and the detector's score: what the metrics, the capture and the drift
        reference keep of an embedded face."""
        return self.quality | {"det_score": self.score}

    @property
    def reason(self) -> str:
        """The ``rejected.csv`` code of a face not embedded (the decoder's for ``bad_image``); "" when ``ok``."""
        if self.status == "bad_image":
            return self.detail.split(":", 1)[0]
        return "" if self.status == "ok" else self.status


class PhotoFaces:
    """``faces(jpeg_bytes)`` -> :class:`PhotoFace`; one detector session, built once."""

    def __init__(self, detector_path: Path | str, settings: PhotoSettings) -> None:
        self.settings = settings
        self.detector = load_detector(DetectorConfig(Path(detector_path), settings.detector_kind, settings.input_size,
                                                     settings.score_threshold, settings.nms_threshold))

    def __call__(self, data: bytes, name: str = "<bytes>") -> PhotoFace:
        s = self.settings
        try:
            rgb = decode_rgb(data, s.max_pixels, name)
        except ImageRejected as exc:
            return PhotoFace("bad_image", f"{exc.reason}: {exc.detail}")
        height, width = rgb.shape[:2]
        found = self.detector.detect(rgb)
        face = pick_main_face(found, width, height, s.centre_weight)
        if face is None:
            return PhotoFace("no_face", f"{name}: no face above score {s.score_threshold}")
        try:
            crop, aligned = align_face(rgb, face.landmarks.astype(np.float64), s.image_size)
        except ValueError as exc:
            return PhotoFace("align_failed", f"{name}: {exc}", bbox=face.bbox, score=face.score, faces=len(found))
        grey = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
        quality = face_measures(grey, aligned) | {"interocular": interocular(face.landmarks)}
        return PhotoFace("ok", "", crop, face.bbox.astype(np.float32), face.landmarks.reshape(-1).astype(np.float32),
                         face.score, len(found), quality)
