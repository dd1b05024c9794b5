"""LazySGD: a sampled Partial FC head updated at the sampled cost gives the dense SGD result."""

from __future__ import annotations

import pytest
import torch

from components.heads import ArcFace, PartialFC
from components.models import get_model
from components.training.config import TrainConfig
from components.training.lazy_sgd import LazySGD
from components.training.optim import build_optimizer, lr_factor
from pipelines.params import TrainParams

C, D, N, STEPS = 60, 8, 6, 30


def _head(rate: float) -> PartialFC:
    return PartialFC(ArcFace(), D, C, sample_rate=rate, seed=1).double()


def _lazy(head: PartialFC) -> LazySGD:
    optimizer = LazySGD([head.weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
    head.attach_row_reader(lambda rows: optimizer.read_rows(head.weight, rows))
    return optimizer


def _train(head: PartialFC, optimizer: torch.optim.Optimizer, steps: range) -> None:
    """Warmup + poly LR as in training."""
    for step in steps:
        for group in optimizer.param_groups:
            group["lr"] = 0.1 * lr_factor(step, STEPS, 4, "poly")
        gen = torch.Generator().manual_seed(step)
        embeddings = torch.randn(N, D, generator=gen, dtype=torch.float64)
        head(embeddings, torch.randint(0, C, (N,), generator=gen)).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def test_lazy_update_equals_dense_sgd_with_momentum_and_weight_decay_across_a_checkpoint() -> None:
    """The reference is the contract's drop-in use: a sampled head trained by torch's own SGD, with the
    momentum and weight decay arcface_torch users train with (its gradient is dense, zero off the sample)."""
    dense_head = _head(0.1)
    dense = torch.optim.SGD([dense_head.weight], lr=0.1, momentum=0.9, weight_decay=5e-4)
    _train(dense_head, dense, range(STEPS))

    lazy_head = _head(0.1)
    lazy = _lazy(lazy_head)
    _train(lazy_head, lazy, range(STEPS // 2))
    saved = lazy.state_dict()  # materialises every row: what a checkpoint holds is the dense state
    resumed_head = _head(0.1)
    resumed_head.load_state_dict(lazy_head.state_dict())
    resumed_head._sampler.set_state(lazy_head._sampler.get_state())
    resumed = _lazy(resumed_head)
    resumed.load_state_dict(saved)
    _train(resumed_head, resumed, range(STEPS // 2, STEPS))

    final = resumed.state_dict()["state"][0]["momentum_buffer"]
    torch.testing.assert_close(resumed_head.weight.detach(), dense_head.weight.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(final, dense.state[dense_head.weight]["momentum_buffer"], rtol=1e-10, atol=1e-12)


def test_a_step_touches_only_the_sampled_rows() -> None:
    head = _head(0.1)
    optimizer = _lazy(head)
    _train(head, optimizer, range(3))
    before = head.weight.detach().clone()
    gen = torch.Generator().manual_seed(99)
    head(torch.randn(N, D, generator=gen, dtype=torch.float64), torch.randint(0, C, (N,), generator=gen)).backward()
    assert head.weight.grad.is_sparse
    sampled = head.weight.grad.coalesce().indices()[0]
    assert len(sampled) == head.num_sample
    optimizer.step()
    untouched = torch.ones(C, dtype=torch.bool)
    untouched[sampled] = False
    assert torch.equal(head.weight.detach()[untouched], before[untouched])  # caught up only when next read
    assert not torch.equal(head.weight.detach()[sampled], before[sampled])


def test_a_sampled_head_without_a_lazy_optimiser_has_a_dense_gradient_zero_off_the_sample() -> None:
    head = _head(0.1)
    gen = torch.Generator().manual_seed(5)
    head(torch.randn(N, D, generator=gen, dtype=torch.float64), torch.randint(0, C, (N,), generator=gen)).backward()
    grad = head.weight.grad
    assert not grad.is_sparse and grad.shape == head.weight.shape
    off_sample = torch.ones(C, dtype=torch.bool)
    off_sample[head.last_index] = False
    assert torch.count_nonzero(grad[off_sample]) == 0
    assert torch.count_nonzero(grad[head.last_index].abs().sum(dim=1)) == head.num_sample


def test_adamw_below_rate_one_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="adamw needs sample_rate 1"):
        TrainParams(optimizer="adamw", sample_rate=0.1)
    cfg = TrainConfig(data_dir="-", out_dir="-", optimizer="adamw", sample_rate=0.1)
    with pytest.raises(ValueError, match="adamw needs train.sample_rate 1"):
        build_optimizer(get_model("mbf", D), PartialFC(ArcFace(), D, C, sample_rate=0.1), cfg)


def test_a_backward_after_the_rows_were_read_again_fails_loudly() -> None:
    """read_rows reuses its buffers: a graph still holding the previous rows must not use overwritten values."""
    head = _head(0.1)
    _lazy(head)
    gen = torch.Generator().manual_seed(0)
    first = head(torch.randn(N, D, generator=gen, dtype=torch.float64), torch.randint(0, C, (N,), generator=gen))
    head(torch.randn(N, D, generator=gen, dtype=torch.float64), torch.randint(0, C, (N,), generator=gen))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        first.backward()
