"""A tiny packed training set from the bundled real faces (no detection needed: fast for tests)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from components.recordio.insightface import write_face_dataset
from components.sample.orl import load_orl_face


def write_tiny_faces(root: Path, classes: int = 6, per_class: int = 8) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for label in range(classes):
        for index in range(1, per_class + 1):
            grey = cv2.resize(load_orl_face(label + 1, index), (112, 112), interpolation=cv2.INTER_LINEAR)
            ok, buf = cv2.imencode(".jpg", np.repeat(grey[:, :, None], 3, axis=2))
            assert ok
            samples.append((label, buf.tobytes()))
    write_face_dataset(root, samples, classes)
    return root
