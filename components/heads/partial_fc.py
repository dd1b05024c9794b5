"""Model-parallel classification layer with Partial FC sampling (An et al., "Partial FC", 2022).

Usage (the same with or without ``torch.distributed`` initialised)::

    head = PartialFC(CombinedMarginLoss(64, 1, 0.5, 0), embedding_size=512, num_classes=C, sample_rate=0.1)
    loss = head(backbone(images), labels)   # mean loss over the *global* batch
    loss.backward()

Worker ``r`` owns a contiguous slice of the class centres (``class_start``, ``num_local`` rows of
``weight``) and their optimiser state, so head memory per worker is proportional to C/W. Embeddings and
labels are all-gathered, logits are computed against the local shard only, and the softmax is
normalised across workers with an all-reduce of the row maxima and of the exponential sums.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn.functional import linear, normalize

from components.heads.dist import (
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce,
    check_equal_batches,
    rank_and_world,
)

INIT_BLOCK = 1 << 16  # classes per deterministic init block: the init does not depend on the worker count


def shard_range(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """(class_start, num_local): the first ``num_classes % world`` workers get one extra class."""
    base, extra = divmod(num_classes, world)
    return base * rank + min(rank, extra), base + int(rank < extra)


def init_centres(start: int, count: int, embedding_size: int, seed: int) -> torch.Tensor:
    """N(0, 0.01) centres for classes ``[start, start+count)``, identical whichever worker draws them."""
    out = torch.empty(count, embedding_size)
    first_block, last_block = start // INIT_BLOCK, (start + count - 1) // INIT_BLOCK if count else -1
    for block in range(first_block, last_block + 1):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + block)
        values = torch.normal(0.0, 0.01, (INIT_BLOCK, embedding_size), generator=gen)
        lo, hi = max(start, block * INIT_BLOCK), min(start + count, (block + 1) * INIT_BLOCK)
        out[lo - start:hi - start] = values[lo - block * INIT_BLOCK:hi - block * INIT_BLOCK]
    return out


class DistSoftmaxCrossEntropy(torch.autograd.Function):
    """Cross-entropy over logits split by columns across workers; returns the global-batch mean.

    Written as one autograd function so the backward is the closed form ``(softmax - onehot) / N``
    on the local shard, without keeping the intermediate exp/normalise graph of a huge matrix.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        logits = logits.detach()
        row_max = all_reduce(logits.max(dim=1, keepdim=True).values, torch.distributed.ReduceOp.MAX)
        prob = (logits - row_max).exp_()
        sum_exp = all_reduce(prob.sum(dim=1, keepdim=True))
        prob.div_(sum_exp)
        rows = torch.nonzero(labels != -1, as_tuple=True)[0]
        target = torch.zeros(logits.shape[0], dtype=logits.dtype, device=logits.device)
        target[rows] = logits[rows, labels[rows]]
        all_reduce(target)
        ctx.save_for_backward(prob, rows, labels[rows])
        # log-sum-exp form: exact even where the target's probability underflows
        return (sum_exp.squeeze(1).log() + row_max.squeeze(1) - target).mean()

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor):  # noqa: ANN001, ANN205
        prob, rows, cols = ctx.saved_tensors
        grad = prob.clone()
        grad[rows, cols] -= 1.0
        return grad.mul_(grad_loss / prob.shape[0]), None


class PartialFC(nn.Module):
    def __init__(self, margin_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], embedding_size: int,
                 num_classes: int, sample_rate: float = 1.0, seed: int = 0) -> None:
        super().__init__()
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.rank, self.world_size = rank_and_world()
        if num_classes < self.world_size:
            raise ValueError(f"{num_classes} classes cannot be sharded over {self.world_size} workers")
        self.margin_softmax = margin_loss
        self.embedding_size, self.num_classes, self.sample_rate = embedding_size, num_classes, sample_rate
        self.class_start, self.num_local = shard_range(num_classes, self.rank, self.world_size)
        self.num_sample = max(1, int(sample_rate * self.num_local))
        self.weight = nn.Parameter(init_centres(self.class_start, self.num_local, embedding_size, seed))
        self._sampler = torch.Generator().manual_seed(seed * 7919 + self.rank)
        self.last_index: torch.Tensor | None = None  # classes used in the last step (local indices)

    def sample(self, local_labels: torch.Tensor) -> torch.Tensor:
        """Keep every positive class of the global batch, fill up with random negatives to ``num_sample``.

        Relabels ``local_labels`` in place to positions within the returned index.
        """
        with torch.no_grad():
            positives = torch.unique(local_labels[local_labels >= 0])
            if len(positives) >= self.num_sample:
                index = positives
            else:
                score = torch.rand(self.num_local, generator=self._sampler).to(local_labels.device)
                score[positives] = 2.0
                index = torch.topk(score, self.num_sample).indices.sort().values
            mask = local_labels >= 0
            local_labels[mask] = torch.searchsorted(index, local_labels[mask])
        return index

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
        local_labels = local_labels.reshape(-1).long()
        if local_embeddings.shape != (local_labels.shape[0], self.embedding_size):
            raise ValueError(f"embeddings {tuple(local_embeddings.shape)} do not match labels "
                             f"{tuple(local_labels.shape)} and embedding_size {self.embedding_size}")
        if self.world_size > 1:
            check_equal_batches(local_labels.shape[0], local_labels.device)
        # The head computes in float32 (float64 when its weights are): never in fp16/bf16 under autocast.
        dtype = torch.float64 if self.weight.dtype == torch.float64 else torch.float32
        embeddings = all_gather_with_grad(local_embeddings.to(dtype))
        labels = all_gather_no_grad(local_labels)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"labels must lie in [0, {self.num_classes}), got {int(labels.min())}..{int(labels.max())}")
        owned = (labels >= self.class_start) & (labels < self.class_start + self.num_local)
        local = torch.where(owned, labels - self.class_start, torch.full_like(labels, -1))
        weight = self.weight
        if self.sample_rate < 1:
            self.last_index = self.sample(local)
            weight = self.weight[self.last_index]
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cosine = linear(normalize(embeddings), normalize(weight.to(dtype))).clamp(-1, 1)
            logits = self.margin_softmax(cosine, local)
            return DistSoftmaxCrossEntropy.apply(logits, local)
