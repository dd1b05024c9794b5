"""Per-face quality measurements on the aligned 112x112 crop and its landmarks."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import imagehash
import numpy as np
from PIL import Image

from components.align.similarity import ARCFACE_TEMPLATE

# Nose height between the eye line and the mouth line on the template: a frontal face keeps this ratio.
_EYE_Y = ARCFACE_TEMPLATE[:2, 1].mean()
_MOUTH_Y = ARCFACE_TEMPLATE[3:, 1].mean()
FRONTAL_NOSE_RATIO = float((ARCFACE_TEMPLATE[2, 1] - _EYE_Y) / (_MOUTH_Y - _EYE_Y))


@dataclass(frozen=True)
class FaceQuality:
    blur: float  # variance of the Laplacian: low = soft or out of focus
    brightness: float  # mean grey level 0..255
    yaw: float  # lateral nose offset / eye distance: 0 = frontal
    pitch: float  # relative change of the nose height ratio: 0 = frontal
    phash: str  # 64-bit perceptual hash (hex) for near-duplicate search

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


def measure(rgb: np.ndarray, aligned_landmarks: np.ndarray) -> FaceQuality:
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    pts = np.asarray(aligned_landmarks, dtype=np.float64).reshape(5, 2)
    eye_dist = max(1e-6, float(np.linalg.norm(pts[1] - pts[0])))
    centre_x = (pts[0, 0] + pts[1, 0] + pts[3, 0] + pts[4, 0]) / 4
    eye_y, mouth_y = pts[:2, 1].mean(), pts[3:, 1].mean()
    ratio = (pts[2, 1] - eye_y) / max(1e-6, mouth_y - eye_y)
    return FaceQuality(
        blur=float(cv2.Laplacian(grey, cv2.CV_64F).var()),
        brightness=float(grey.mean()),
        yaw=float(abs(pts[2, 0] - centre_x) / eye_dist),
        pitch=float(abs(ratio - FRONTAL_NOSE_RATIO) / FRONTAL_NOSE_RATIO),
        phash=str(imagehash.phash(Image.fromarray(grey))),
    )
