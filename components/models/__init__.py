"""Backbones: ``get_model("r50")`` and friends; 112x112 RGB in, an embedding out."""

from __future__ import annotations

from torch import nn

from components.models.iresnet import DEPTHS, IResNet
from components.models.mobilefacenet import MobileFaceNet

NAMES = (*DEPTHS, "mbf", "mbf_large")


def get_model(name: str, embedding_size: int = 512, dropout: float = 0.0) -> nn.Module:
    """One factory for every backbone, named as in arcface_torch configs."""
    if name in DEPTHS:
        return IResNet(DEPTHS[name], embedding_size, dropout)
    if name == "mbf":
        return MobileFaceNet(embedding_size)
    if name == "mbf_large":
        return MobileFaceNet(embedding_size, blocks=(2, 8, 12, 4), scale=4)
    raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(NAMES)}")


__all__ = ["get_model", "NAMES", "IResNet", "MobileFaceNet"]
