"""Aligned crops as the backbones take them: one definition for every place that feeds a model.

Kept apart from components/evaluation/embedders.py (torch) so the photo-in Triton model, which ships only
the modules it imports, can use it without PyTorch.
"""

from __future__ import annotations

import numpy as np


def to_input(faces: np.ndarray) -> np.ndarray:
    """uint8 NHWC RGB -> float32 NCHW in [-1, 1], the layout and scaling the backbones were trained on."""
    return (faces.transpose(0, 3, 1, 2).astype(np.float32) / 127.5) - 1.0
