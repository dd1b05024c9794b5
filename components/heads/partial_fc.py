"""Model-parallel classification layer with Partial FC sampling (An et al., "Partial FC", 2022).

Usage (the same with or without ``torch.distributed`` initialised)::

    head = PartialFC(CombinedMarginLoss(64, 1, 0.5, 0), embedding_size=512, num_classes=C, sample_rate=0.1)
    loss = head(backbone(images), labels)   # mean loss over the *global* batch
    loss.backward()

Worker ``r`` owns a contiguous slice of the class centres (``class_start``, ``num_local`` rows of
``weight``) and their optimiser state, so head memory per worker is proportional to C/W. Embeddings and
labels are all-gathered, logits are computed against the local shard only, and the softmax is
normalised across workers with an all-reduce of the row maxima and of the exponential sums.

At sample rate < 1 only the sampled rows enter the logits (``SampledRows``). With a stock optimiser (e.g.
``torch.optim.SGD(momentum=0.9, weight_decay=5e-4)``, as arcface_torch trains) their gradient reaches
``weight`` as a dense tensor, zero outside the sampled rows, which every torch optimiser accepts. An optimiser
that reads rows lazily (``components/training/lazy_sgd.LazySGD``) attaches itself with ``attach_row_reader``:
the gradient is then row-sparse and the backward pass and the update cost O(rate x C) rather than O(C), with
the same result; its reader returns the sampled rows brought up to date.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.functional import linear, normalize

from components.heads.dist import (
    all_gather_no_grad,
    all_gather_with_grad,
    all_reduce,
    check_equal_batches,
    rank_and_world,
)
from components.heads.margins import CombinedMarginLoss

INIT_BLOCK = 1 << 16  # classes per deterministic init block: the init does not depend on the worker count
CENTRE_BLOCK = 1 << 16  # centres per block of the cosine backward: bounds its temporaries


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


class SampledRows(torch.autograd.Function):
    """``weight[index]`` given as ``rows`` (read by the caller, e.g. brought up to date by a lazy optimiser),
    whose gradient reaches ``weight`` as a row-sparse tensor (sorted unique ``index``: coalesced) when
    ``sparse``, else as a dense one: torch's own optimisers cannot add a sparse gradient to their state."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, index: torch.Tensor, rows: torch.Tensor,  # noqa: ANN001
                sparse: bool) -> torch.Tensor:
        ctx.save_for_backward(index)
        ctx.shape, ctx.sparse = weight.shape, sparse
        return rows

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        (index,) = ctx.saved_tensors
        if ctx.sparse:
            full = torch.sparse_coo_tensor(index.unsqueeze(0), grad, ctx.shape, is_coalesced=True,
                                           check_invariants=False)
        else:
            full = grad.new_zeros(ctx.shape).index_copy_(0, index, grad)
        return full, None, None, None


class CosineToCentres(torch.autograd.Function):
    """``cos(e_i, w_j) = (e_i . w_j) / |w_j|`` for unit embeddings ``e`` and the raw centres ``w``.

    ``linear(e, normalize(w))`` keeps a normalised copy of every centre for the backward and builds two more
    of that size in it: at 1M classes, gigabytes per worker. Here the forward keeps only ``1/|w_j|`` and the
    backward is the closed form ``dL/dw_j = (M_j - (w_j . M_j) w_j / |w_j|^2) / |w_j|`` with ``M = G^T e``
    (whose buffer becomes the gradient; blocks of centres bound the temporaries), and ``dL/de = (G / |w|) w``.
    """

    @staticmethod
    def forward(ctx, unit_embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        unit_embeddings, weight = unit_embeddings.detach(), weight.detach()
        inv_norm = torch.linalg.vector_norm(weight, dim=1).clamp_min_(1e-12).reciprocal_()
        ctx.save_for_backward(unit_embeddings, weight, inv_norm)
        return linear(unit_embeddings, weight).mul_(inv_norm)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        unit, weight, inv_norm = ctx.saved_tensors
        grad_weight = grad.t().mm(unit) if ctx.needs_input_grad[1] else None
        for lo in range(0, weight.shape[0], CENTRE_BLOCK):
            block = slice(lo, lo + CENTRE_BLOCK)
            if grad_weight is not None:
                inv, m = inv_norm[block, None], grad_weight[block]
                # w_j . M_j as a batched product: vecdot would build a block-sized product first
                radial = torch.bmm(weight[block].unsqueeze(1), m.unsqueeze(2)).squeeze(2) * inv.pow(3)
                m.mul_(inv).addcmul_(weight[block], radial, value=-1.0)
        grad_unit = None
        if ctx.needs_input_grad[0]:
            # the incoming gradient is logits-sized and used by nothing after this function: scaled in place
            grad_unit = grad.mul_(inv_norm).mm(weight)
        return grad_unit, grad_weight


def cosine_to_centres(unit_embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return CosineToCentres.apply(unit_embeddings, weight)


class DistSoftmaxCrossEntropy(torch.autograd.Function):
    """Cross-entropy over logits split by columns across workers; returns the global-batch mean.

    The logits are ``scale * scores`` except at the target entries ``(rows, cols)``, which are
    ``scale * target_fn(score)`` (``target_fn`` None: unchanged). A margin that only changes the target
    (ArcFace, CosFace, combined) thus passes the raw cosines as ``scores``, and the logits exist once: built
    in the scores' own buffer (consumed: the caller must not read ``scores`` afterwards), turned into the
    softmax in place, and into the gradient in place in the backward, the
    closed form ``(softmax - onehot) / N``, with the margin's own derivative on the target entries (from a
    small autograd graph of those N values). Nothing else of logits size is allocated (docs/training.md).
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, scale: float,  # noqa: ANN001
                target_fn: Callable[[torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        score_at_target = scores.detach()[rows, cols]
        ctx.target_graph = None
        if target_fn is None:
            target = score_at_target * scale
        else:
            with torch.enable_grad():
                leaf = score_at_target.requires_grad_()
                ctx.target_graph = (leaf, target_fn(leaf) * scale)
            target = ctx.target_graph[1].detach()
        prob = scores.detach().mul_(scale)  # nothing else keeps the scores: the one logits-sized buffer
        prob[rows, cols] = target
        row_max = all_reduce(prob.max(dim=1, keepdim=True).values, torch.distributed.ReduceOp.MAX)
        prob.sub_(row_max).exp_()
        sum_exp = all_reduce(prob.sum(dim=1, keepdim=True))
        prob.div_(sum_exp)
        row_target = torch.zeros(prob.shape[0], dtype=prob.dtype, device=prob.device)
        row_target[rows] = target
        all_reduce(row_target)
        ctx.save_for_backward(prob, rows, cols)
        ctx.scale = scale
        # log-sum-exp form: exact even where the target's probability underflows
        return (sum_exp.squeeze(1).log() + row_max.squeeze(1) - row_target).mean()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: torch.Tensor):  # noqa: ANN001, ANN205
        prob, rows, cols = ctx.saved_tensors
        factor = grad_loss / prob.shape[0]
        grad_target = (prob[rows, cols] - 1.0) * factor  # d loss / d target logit
        grad_scores = prob.mul_(factor * ctx.scale)  # the softmax buffer becomes the gradient
        if ctx.target_graph is None:
            grad_scores[rows, cols] = grad_target * ctx.scale
        else:
            leaf, target = ctx.target_graph
            grad_scores[rows, cols] = torch.autograd.grad(target, leaf, grad_target)[0]
            ctx.target_graph = None
        return grad_scores, None, None, None, None


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
        # the current values of the sampled rows; a lazy optimiser's brings them up to date first
        self.row_reader: Callable[[torch.Tensor], torch.Tensor] = lambda index: self.weight.detach()[index]
        self.sparse_gradient = False  # True once an optimiser that reads rows lazily is attached

    def attach_row_reader(self, reader: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Hand the sampled rows' reads to a lazy optimiser (``LazySGD.read_rows``), which then also takes
        their gradient row-sparse; without one, the gradient is dense and any torch optimiser works."""
        self.row_reader, self.sparse_gradient = reader, True

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
            weight = SampledRows.apply(self.weight, self.last_index, self.row_reader(self.last_index),
                                       self.sparse_gradient)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            cosine = cosine_to_centres(normalize(embeddings), weight.to(dtype))
            rows = torch.nonzero(local != -1, as_tuple=True)[0]
            cols = local[rows]
            if isinstance(self.margin_softmax, CombinedMarginLoss):  # only the target changes: no logits copy
                margin = self.margin_softmax
                return DistSoftmaxCrossEntropy.apply(cosine, rows, cols, margin.s,
                                                     lambda cos: margin.target(cos.clamp(-1, 1)))
            logits = self.margin_softmax(cosine.clamp(-1, 1), local)
            return DistSoftmaxCrossEntropy.apply(logits, rows, cols, 1.0, None)
