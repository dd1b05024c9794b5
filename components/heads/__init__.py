"""Margin losses and the model-parallel Partial FC head (drop-in for arcface_torch's PartialFC_V2)."""

from components.heads.margins import ArcFace, CombinedMarginLoss, CosFace, CurricularFace
from components.heads.partial_fc import PartialFC, shard_range

__all__ = ["ArcFace", "CombinedMarginLoss", "CosFace", "CurricularFace", "PartialFC", "shard_range"]
