"""Backbones load arcface_torch checkpoints with strict=True: same parameter names, same shapes.

The expected tables in tests/data were produced from InsightFace arcface_torch's own backbone
definitions (state_dict keys and shapes of ``iresnet50()`` and ``get_mbf(False, 512)``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from components.models import get_model

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["r50", "mbf"])
def test_state_dict_matches_arcface_torch(name: str) -> None:
    expected = json.loads((DATA / f"arcface_torch_{name}_state_dict.json").read_text())
    mine = {k: list(v.shape) for k, v in get_model(name).state_dict().items()}
    assert list(mine) == list(expected)
    assert mine == expected
    # A checkpoint with exactly these tensors loads strictly.
    checkpoint = {k: torch.zeros(shape) for k, shape in expected.items()}
    get_model(name).load_state_dict(checkpoint, strict=True)


@pytest.mark.parametrize("name", ["r18", "r34", "mbf", "mbf_large"])
def test_embedding_shape(name: str) -> None:
    model = get_model(name, embedding_size=128).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 112, 112)).shape == (2, 128)


def test_unknown_backbone_lists_choices() -> None:
    with pytest.raises(ValueError, match="r50, r100"):
        get_model("resnet50")
