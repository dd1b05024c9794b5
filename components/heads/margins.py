"""Margin-based softmax logits: ArcFace, CosFace, SphereFace-style m1, their combination, CurricularFace.

All take cosine logits ``[N, C_local]`` and labels ``[N]`` local to this worker's class shard (``-1``:
the row's class lives on another worker) and return scaled logits. The target logit becomes
``cos(m1*theta + m2) - m3``, computed with autograd through ``theta`` (no straight-through tricks).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from components.heads.dist import all_reduce

_EPS = 1e-7


def _target_rows(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows = torch.nonzero(labels != -1, as_tuple=True)[0]
    return rows, labels[rows]


class CombinedMarginLoss(nn.Module):
    """``s * (cos(m1*theta + m2) - m3)`` on the target class, ``s * cos`` elsewhere.

    ArcFace is (1, 0.5, 0), CosFace (1, 0, 0.35), SphereFace-style (1.35, 0, 0) and combined forms
    mix them. Past ``theta_limit = (pi - m2) / m1`` the cosine would rise again and reward a *worse*
    angle, so the target continues as ``cos(theta) - offset`` there: continuous at the limit and
    monotonically decreasing in theta, as the ArcFace paper's non-easy-margin variant intends.
    """

    def __init__(self, s: float = 64.0, m1: float = 1.0, m2: float = 0.5, m3: float = 0.0) -> None:
        super().__init__()
        if s <= 0 or m1 < 1 or m2 < 0 or m3 < 0:
            raise ValueError(f"need s > 0, m1 >= 1, m2 >= 0, m3 >= 0; got s={s}, m1={m1}, m2={m2}, m3={m3}")
        self.s, self.m1, self.m2, self.m3 = s, m1, m2, m3
        self.theta_limit = (math.pi - m2) / m1
        self.offset = math.cos(self.theta_limit) + 1.0  # cos(theta_limit) - cos(m1*theta_limit + m2)

    def target(self, cos: torch.Tensor) -> torch.Tensor:
        if self.m1 == 1.0 and self.m2 == 0.0:
            return cos - self.m3
        theta = torch.acos(cos.clamp(-1 + _EPS, 1 - _EPS))
        margin = torch.where(theta <= self.theta_limit, torch.cos(self.m1 * theta + self.m2), cos - self.offset)
        return margin - self.m3

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows, cols = _target_rows(labels)
        if len(rows):
            logits = logits.index_put((rows, cols), self.target(logits[rows, cols]))
        return logits * self.s


def ArcFace(s: float = 64.0, m: float = 0.5) -> CombinedMarginLoss:  # noqa: N802 - reads like a class
    return CombinedMarginLoss(s, 1.0, m, 0.0)


def CosFace(s: float = 64.0, m: float = 0.35) -> CombinedMarginLoss:  # noqa: N802
    return CombinedMarginLoss(s, 1.0, 0.0, m)


class CurricularFace(nn.Module):
    """CurricularFace (Huang et al., CVPR 2020): ArcFace target, hard negatives re-weighted by ``t``.

    A negative whose cosine exceeds the row's margined target is "hard" and becomes ``cos * (t + cos)``;
    ``t`` is a running mean of target cosines (momentum 0.99), so early training emphasises easy
    samples and later the hard ones. Under model parallelism each row's target lives on one worker, so
    the per-row targets and the batch mean are all-reduced to keep ``t`` identical everywhere.
    """

    def __init__(self, s: float = 64.0, m: float = 0.5, momentum: float = 0.99) -> None:
        super().__init__()
        self.s, self.momentum = s, momentum
        self.arc = CombinedMarginLoss(s, 1.0, m, 0.0)
        self.register_buffer("t", torch.zeros(()))

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows, cols = _target_rows(labels)
        cos_target = logits[rows, cols]
        margined = self.arc.target(cos_target)
        with torch.no_grad():
            per_row = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
            per_row[rows] = margined.detach()
            all_reduce(per_row)  # every worker now knows every row's margined target
            stats = torch.stack([cos_target.detach().sum(), torch.tensor(float(len(rows)), dtype=logits.dtype,
                                                                         device=logits.device)])
            all_reduce(stats)
            if stats[1] > 0:
                self.t.mul_(self.momentum).add_((1 - self.momentum) * stats[0] / stats[1])
            hard = logits.detach() > per_row[:, None]
        weighted = torch.where(hard, logits * (self.t + logits), logits)
        if len(rows):
            weighted = weighted.index_put((rows, cols), margined)
        return weighted * self.s
