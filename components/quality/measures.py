"""The numeric quality measures of one aligned face: what quality_filter thresholds and the served model reports.

One implementation for both, so that a served face's blur or pose is the number the training faces were filtered
on and the drift check compares like with like (docs/monitoring.md). OpenCV and numpy only: the photo-in model
ships this module into Triton, whose image has no imagehash.
"""

from __future__ import annotations

import cv2
import numpy as np

from components.align.similarity import ARCFACE_TEMPLATE

# Nose height between the eye line and the mouth line on the template: a frontal face keeps this ratio.
_EYE_Y = ARCFACE_TEMPLATE[:2, 1].mean()
_MOUTH_Y = ARCFACE_TEMPLATE[3:, 1].mean()
FRONTAL_NOSE_RATIO = float((ARCFACE_TEMPLATE[2, 1] - _EYE_Y) / (_MOUTH_Y - _EYE_Y))


def face_measures(grey: np.ndarray, aligned_landmarks: np.ndarray) -> dict[str, float]:
    """``blur`` (variance of the Laplacian: low = soft), ``brightness`` (mean grey 0..255), ``yaw`` (lateral nose
    offset / eye distance) and ``pitch`` (relative change of the nose height ratio): 0 = frontal."""
    pts = np.asarray(aligned_landmarks, dtype=np.float64).reshape(5, 2)
    eye_dist = max(1e-6, float(np.linalg.norm(pts[1] - pts[0])))
    centre_x = (pts[0, 0] + pts[1, 0] + pts[3, 0] + pts[4, 0]) / 4
    eye_y, mouth_y = pts[:2, 1].mean(), pts[3:, 1].mean()
    ratio = (pts[2, 1] - eye_y) / max(1e-6, mouth_y - eye_y)
    return {"blur": float(cv2.Laplacian(grey, cv2.CV_64F).var()), "brightness": float(grey.mean()),
            "yaw": float(abs(pts[2, 0] - centre_x) / eye_dist),
            "pitch": float(abs(ratio - FRONTAL_NOSE_RATIO) / FRONTAL_NOSE_RATIO)}


def interocular(landmarks: np.ndarray) -> float:
    """Eye distance in the photo's pixels (the face's size, quality_filter's ``min_interocular``)."""
    pts = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    return float(np.hypot(*(pts[1] - pts[0])))
