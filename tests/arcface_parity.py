"""What the arcface_torch step-parity reference and its test share: cases, inputs and the summary compared.

Everything runs in float64 so that the two implementations, which order their floating-point operations
differently, agree to ~1e-12 where they compute the same thing and visibly differ where they do not.
The reference itself is produced once by ``tests/make_arcface_reference.py`` from arcface_torch's code.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from components.heads.partial_fc import init_centres
from components.models import get_model

REFERENCE = "tests/data/arcface_parity.pt"
CLASSES, EMBEDDING, BATCH, STEPS = 200, 512, 8, 3
LR, MOMENTUM, WEIGHT_DECAY, CLIP, WARMUP, TOTAL = 0.1, 0.9, 5e-4, 5.0, 2, 10
# (backbone, margin (m1, m2, m3), sample rate): iResNet and MobileFaceNet, ArcFace at rate 1 and 0.1, and
# CosFace, whose margin arcface_torch differentiates like faceforge (ArcFace's it does not: see the test).
# iResNet once, at the sampled rate: the head at rate 1 is the MobileFaceNet case's, the backbone the same
# at either rate (its r18-rate1 case cost CI ~35 s and checked nothing the two others do not).
CASES = [("r18", (1.0, 0.5, 0.0), 0.1), ("mbf", (1.0, 0.5, 0.0), 1.0), ("mbf", (1.0, 0.5, 0.0), 0.1),
         ("mbf", (1.0, 0.0, 0.4), 0.1)]


def case_name(backbone: str, margin: tuple[float, float, float], rate: float) -> str:
    return f"{backbone}-m{margin[0]:g},{margin[1]:g},{margin[2]:g}-rate{rate:g}"


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Initial weights are drawn under float32 whatever the caller's default (the reference runs under
    float64); the steps run under float64 on both sides (Partial FC draws its random negatives in it)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def initial_backbone(name: str) -> nn.Module:
    with default_dtype(torch.float32):
        torch.manual_seed(0)
        return get_model(name, EMBEDDING).double()


def initial_centres() -> torch.Tensor:
    with default_dtype(torch.float32):
        return init_centres(0, CLASSES, EMBEDDING, seed=0).double()


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of ``step``: a few labels repeat, so a class has several rows."""
    gen = torch.Generator().manual_seed(1000 + step)
    images = torch.randn(BATCH, 3, 112, 112, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, CLASSES // 4, (BATCH,), generator=gen)
    return images, labels


def _stats(tensor: torch.Tensor) -> torch.Tensor:
    flat = tensor.detach().double().flatten()
    head = torch.zeros(8, dtype=torch.float64)
    head[:min(8, flat.numel())] = flat[:8]
    return torch.cat([flat.sum().reshape(1), flat.square().sum().reshape(1), head])


def summary(backbone: nn.Module, centres: torch.Tensor, momentum: torch.Tensor) -> dict[str, Any]:
    """Per backbone tensor: sum, sum of squares and first values; per class centre (and its momentum):
    sum and sum of squares of the row. Small enough to commit, sensitive to any difference in the step."""
    rows = lambda t: torch.stack([t.detach().double().sum(1), t.detach().double().square().sum(1)], 1)  # noqa: E731
    tensors = {k: v for k, v in backbone.state_dict().items() if v.is_floating_point()}
    return {"backbone_names": list(tensors), "backbone": torch.stack([_stats(v) for v in tensors.values()]),
            "centres": rows(centres), "momentum": rows(momentum)}
