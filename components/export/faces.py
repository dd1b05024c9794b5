"""Real aligned faces for parity checks and INT8 calibration, drawn reproducibly from the packed training set.

Calibration on random tensors sets activation ranges for inputs the model never sees; ranges from real faces
are what make INT8 keep its accuracy, so an empty or missing set is an error, never a fallback.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.recordio.dataset import FaceRecordDataset


def sample_faces(packed_dir: Path | str, count: int, seed: int = 0) -> np.ndarray:
    """uint8 [min(count, N), 112, 112, 3] RGB, a seeded uniform sample without replacement."""
    packed_dir = Path(packed_dir)
    if not (packed_dir / "train.rec").is_file():
        raise FileNotFoundError(f"{packed_dir}/train.rec: no packed faces to calibrate or check on")
    dataset = FaceRecordDataset(packed_dir, random_flip=False)
    if len(dataset) == 0 or count < 1:
        raise ValueError(f"{packed_dir}: the calibration set is empty ({len(dataset)} faces, {count} requested)")
    picks = np.sort(np.random.default_rng(seed).choice(len(dataset), min(count, len(dataset)), replace=False))
    return np.stack([dataset.read(int(i))[0] for i in picks])
