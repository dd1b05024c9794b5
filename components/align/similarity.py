"""Five-point similarity alignment onto the standard ArcFace 112x112 template.

The template is the one every InsightFace-trained model expects; a different crop silently costs
accuracy when users bring their own checkpoints, so it is fixed here rather than a param.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float64,
)


def estimate_transform(landmarks: np.ndarray, image_size: int = 112) -> np.ndarray:
    """2x3 least-squares (Umeyama) similarity mapping ``landmarks`` (5x2) onto the template."""
    if landmarks.shape != (5, 2) or not np.isfinite(landmarks).all():
        raise ValueError(f"need 5 finite (x, y) landmarks, got {landmarks.shape}")
    template = ARCFACE_TEMPLATE * (image_size / 112.0)
    tform = SimilarityTransform.from_estimate(landmarks.astype(np.float64), template)
    if not tform:  # skimage returns a falsy FailedEstimation for degenerate (e.g. coincident) points
        raise ValueError(f"degenerate landmarks: {tform}")
    return np.asarray(tform.params[:2], dtype=np.float64)


def align_face(rgb: np.ndarray, landmarks: np.ndarray, image_size: int = 112) -> tuple[np.ndarray, np.ndarray]:
    """Return the aligned crop and the landmarks mapped into it."""
    matrix = estimate_transform(landmarks, image_size)
    crop = cv2.warpAffine(rgb, matrix, (image_size, image_size), flags=cv2.INTER_LINEAR, borderValue=0)
    mapped = landmarks @ matrix[:, :2].T + matrix[:, 2]
    return crop, mapped
