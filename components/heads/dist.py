"""The few collectives the model-parallel head needs, each a no-op without a process group.

Keeping the single-process path inside the same functions (instead of ``if distributed`` branches in
the head) is what makes "one worker" and "W workers" literally the same code.
"""

from __future__ import annotations

import torch
from torch import distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """In place, returns the tensor for chaining."""
    if rank_and_world()[1] > 1:
        dist.all_reduce(tensor, op)
    return tensor


def all_gather_no_grad(tensor: torch.Tensor) -> torch.Tensor:
    rank, world = rank_and_world()
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class _AllGatherGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this rank's slice of the summed gradients.

    Every rank computes the same global loss but differentiates it only through its own class shard,
    so the gradient of a rank's embeddings is the sum of all ranks' partial gradients. It is then
    multiplied by the world size because DDP *averages* backbone gradients across ranks: with that
    factor, DDP's average equals the single-process gradient of the global loss.
    """

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        rank, world = rank_and_world()
        ctx.rank, ctx.world, ctx.rows = rank, world, tensor.shape[0]
        return all_gather_no_grad(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        grad = all_reduce(grad.contiguous().clone())
        own = grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]
        return own * ctx.world


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    if rank_and_world()[1] == 1:
        return tensor
    return _AllGatherGrad.apply(tensor)


def check_equal_batches(batch_size: int, device: torch.device) -> None:
    """All-gather needs the same local batch on every rank; say so instead of hanging or crashing."""
    sizes = all_gather_no_grad(torch.tensor([batch_size], device=device))
    if len(set(sizes.tolist())) > 1:
        raise ValueError(f"local batch sizes differ across workers: {sizes.tolist()} (use drop_last=True)")
