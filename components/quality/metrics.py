"""Per-face quality measurements on the aligned 112x112 crop and its landmarks."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import imagehash
import numpy as np
from PIL import Image

from components.quality.measures import face_measures


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
    return FaceQuality(**face_measures(grey, aligned_landmarks), phash=str(imagehash.phash(Image.fromarray(grey))))
