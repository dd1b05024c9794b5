"""Data-parallel replicas must stay one model: a cheap check that they do, every ``replica_check_every`` steps.

DDP averages the backbone's gradients, so every worker applies the same update to the same weights and the
copies stay bitwise identical -- unless something computes a per-worker factor (the gradient clip once did:
its norm included the worker's own head shard). Only rank 0's copy is saved, so a divergence would pass
silently. Each worker sums every backbone parameter in float64 and the workers compare those sums exactly:
one small all-gather (a few hundred numbers), no copy of the weights.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class ReplicaDivergence(RuntimeError):
    """The workers' backbone copies differ: data-parallel training no longer trains one model."""


def parameter_sums(module: nn.Module) -> torch.Tensor:
    """One float64 sum per parameter tensor, on the parameters' device (NCCL gathers device tensors)."""
    return torch.stack([p.detach().double().sum() for p in module.parameters()])


def check_replicas(module: nn.Module, step: int) -> None:
    """Raise :class:`ReplicaDivergence`, naming ``step``, unless every worker holds bitwise the same sums."""
    if not dist.is_available() or not dist.is_initialized() or dist.get_world_size() < 2:
        return
    local = parameter_sums(module)
    everyone = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, local)
    differing = [rank for rank, sums in enumerate(everyone) if not torch.equal(sums, everyone[0])]
    if differing:
        worst = max(float((sums - everyone[0]).abs().max()) for sums in everyone)
        raise ReplicaDivergence(f"step {step}: the backbone copies of workers {differing} differ from worker 0's "
                                f"(largest per-tensor sum difference {worst:.3g}); data-parallel training no longer "
                                "trains one model, stopping")
