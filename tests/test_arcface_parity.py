"""A faceforge training step equals arcface_torch's, except where faceforge differs on purpose.

The reference (tests/data/arcface_parity.pt, provenance in tests/make_arcface_reference.py) is arcface_torch's
``train_v2.py`` step in float64 from the same initial weights and batches. faceforge's step here is its own
code: ``PartialFC`` + ``LazySGD`` (``build_optimizer``) + ``optimiser_step`` (backbone-only clip). Deliberate
differences, each shown below to be the only one:

* ArcFace's gradient: arcface_torch applies the angular margin under ``torch.no_grad``, so the target logit
  ``cos(theta + m)`` is differentiated as if it were ``cos(theta)`` (a straight-through estimate); faceforge
  differentiates through ``theta``. With faceforge's target made straight-through, every step equals the
  reference; unchanged, the gradient differs only on the target entries, by ``sin(theta + m) / sin(theta)``.
* Warmup: arcface_torch's ``PolynomialLRWarmup`` uses the full rate on the first step and ``k / W`` after;
  faceforge ramps ``(k + 1) / W`` from the first step. After warmup both are ``(1 - progress)^2``. The parity
  steps feed the reference's rates so that the step logic is compared on its own.
* The loss value: faceforge's log-sum-exp form is exact where arcface_torch clamps the target probability at
  1e-30; equal here, where nothing underflows.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from components.heads import CombinedMarginLoss, PartialFC, partial_fc
from components.training.config import TrainConfig
from components.training.loop import optimiser_step
from components.training.optim import build_optimizer, lr_factor
from tests.arcface_parity import (
    CASES,
    CLASSES,
    CLIP,
    EMBEDDING,
    LR,
    MOMENTUM,
    REFERENCE,
    STEPS,
    TOTAL,
    WARMUP,
    WEIGHT_DECAY,
    batch,
    case_name,
    default_dtype,
    initial_backbone,
    initial_centres,
    summary,
)

pytestmark = pytest.mark.slow  # a heavy module: scheduled among the first (tests/conftest.py)

TIGHT = {"rtol": 1e-9, "atol": 1e-9}


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(Path(__file__).parents[1] / REFERENCE, weights_only=False)


def _straight_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """faceforge's target value with arcface_torch's gradient (d target / d cos = 1)."""
    exact = CombinedMarginLoss.target
    monkeypatch.setattr(CombinedMarginLoss, "target", lambda self, cos: cos + (exact(self, cos) - cos).detach())


def _setup(backbone_name: str, margin: tuple[float, float, float], rate: float):  # noqa: ANN202
    backbone = initial_backbone(backbone_name)
    head = PartialFC(CombinedMarginLoss(64, *margin), EMBEDDING, CLASSES, rate).double()
    with torch.no_grad():
        head.weight.copy_(initial_centres())
    cfg = TrainConfig(data_dir="-", out_dir="-", lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY,
                      sample_rate=rate, grad_clip=CLIP)
    return backbone.train(), head, build_optimizer(backbone, head, cfg)


def _forward(backbone: torch.nn.Module, head: PartialFC, step: int, ref_step: dict) -> torch.Tensor:
    if ref_step["sampler_state"] is not None:
        head._sampler.set_state(ref_step["sampler_state"])  # the same random negatives as arcface_torch drew
    images, labels = batch(step)
    with default_dtype(torch.float64):
        return head(backbone(images), labels.clone())


@pytest.mark.parametrize("case", CASES, ids=[case_name(*c) for c in CASES])
def test_steps_equal_arcface_torch(case: tuple, reference: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = reference[case_name(*case)]
    if case[1][1] > 0:  # an angular margin: compare with arcface_torch's gradient of it (see the module doc)
        _straight_through(monkeypatch)
    backbone, head, optimizer = _setup(*case)
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    for step, ref_step in enumerate(ref["steps"]):
        for group in optimizer.param_groups:
            group["lr"] = ref_step["lr"]
        loss = _forward(backbone, head, step, ref_step)
        loss.backward()
        grads = [p.grad.norm() for p in backbone.parameters() if p.grad is not None]
        grad_norm = torch.linalg.vector_norm(torch.stack(grads))
        assert grad_norm > CLIP  # the clip binds on every step
        optimiser_step(optimizer, disabled, backbone, CLIP)
        assert loss.item() == pytest.approx(ref_step["loss"], rel=1e-12)
        assert float(grad_norm) == pytest.approx(ref_step["grad_norm"], rel=1e-10)
        if ref_step["sampled"] is not None:
            assert torch.equal(head.last_index, ref_step["sampled"])
    optimizer.materialise()
    ours = summary(backbone, head.weight, optimizer.state[head.weight]["momentum_buffer"])
    assert ours["backbone_names"] == ref["backbone_names"]
    for key in ("backbone", "centres", "momentum"):
        torch.testing.assert_close(ours[key], ref[key], **TIGHT, msg=lambda m, k=key: f"{k}: {m}")


def test_arcface_gradient_differs_only_on_the_target_entries(monkeypatch: pytest.MonkeyPatch) -> None:
    """d loss / d cosine, faceforge's ArcFace vs. the straight-through one proven equal to arcface_torch above."""
    grads, real = {}, partial_fc.cosine_to_centres
    for variant in ("faceforge", "straight_through"):
        with monkeypatch.context() as patch:
            if variant == "straight_through":
                _straight_through(patch)
            cosines = []

            def spy(x: torch.Tensor, w: torch.Tensor, seen: list = cosines) -> torch.Tensor:
                out = real(x, w)
                out.retain_grad()
                seen.append((out.detach().clone(), out))  # a copy: the loss consumes the scores' buffer
                return out

            patch.setattr(partial_fc, "cosine_to_centres", spy)
            backbone, head, _ = _setup("mbf", (1.0, 0.5, 0.0), 1.0)
            images, labels = batch(0)
            head(backbone(images), labels.clone()).backward()
            grads[variant] = (cosines[0][0], cosines[0][1].grad)
    (cosine, ours), (_, straight) = grads["faceforge"], grads["straight_through"]
    rows, cols = torch.arange(len(labels)), labels
    target = torch.zeros_like(cosine, dtype=torch.bool)
    target[rows, cols] = True
    torch.testing.assert_close(ours[~target], straight[~target], **TIGHT)  # every other logit: identical
    theta = torch.acos(cosine[rows, cols])
    torch.testing.assert_close(ours[rows, cols] / straight[rows, cols], torch.sin(theta + 0.5) / torch.sin(theta),
                               **TIGHT)


def test_learning_rate_schedule_after_warmup_equals_arcface_torch(reference: dict) -> None:
    theirs = [s["lr"] for s in next(iter(reference.values()))["steps"]]
    ours = [LR * lr_factor(k, TOTAL, WARMUP, "poly") for k in range(STEPS)]
    assert theirs[0] == LR  # arcface_torch: the full rate on the very first step
    assert ours[0] == pytest.approx(theirs[1])  # then k/W there, (k+1)/W here: one step earlier
    assert ours[WARMUP:] == pytest.approx(theirs[WARMUP:])  # (1 - progress)^2 after warmup, both
