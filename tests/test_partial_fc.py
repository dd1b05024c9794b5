"""The model-parallel head equals a plain full softmax: loss and backbone gradients, 2 gloo workers vs 1."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.functional import cross_entropy, linear, normalize

from components.heads import ArcFace, CombinedMarginLoss, CosFace, CurricularFace, PartialFC, partial_fc, shard_range
from components.heads.partial_fc import init_centres

C, D, LOCAL_BATCH, WORLD = 11, 8, 4, 2  # 11 classes: the two shards differ in size (6 and 5)


def _problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    backbone = torch.nn.Linear(6, D).double()
    images = torch.randn(LOCAL_BATCH * WORLD, 6, dtype=torch.float64)
    labels = torch.tensor([0, 3, 3, 10, 5, 6, 1, 9])
    return backbone, images, labels


def _margin(kind: str) -> torch.nn.Module:
    return {"arc": lambda: ArcFace(64, 0.5), "combined": lambda: CombinedMarginLoss(32, 1.2, 0.3, 0.1),
            "curricular": lambda: CurricularFace(64, 0.5)}[kind]()


def _single_process(kind: str) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Reference: one process, a plain full-softmax head written independently of PartialFC."""
    backbone, images, labels = _problem()
    centres = torch.nn.Parameter(init_centres(0, C, D, seed=0).double())
    cosine = linear(normalize(backbone(images)), normalize(centres)).clamp(-1, 1)
    loss = cross_entropy(_margin(kind)(cosine, labels), labels)
    loss.backward()
    return loss.item(), backbone.weight.grad.clone(), centres.grad.clone()


def _worker(rank: int, init_file: str, kind: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    backbone, images, labels = _problem()
    head = PartialFC(_margin(kind), D, C, sample_rate=1.0).double()
    part = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    loss = head(backbone(images[part]), labels[part])
    loss.backward()
    grad = backbone.weight.grad.clone()
    dist.all_reduce(grad)
    grad /= WORLD  # what DDP does to backbone gradients
    torch.save({"loss": loss.item(), "backbone_grad": grad, "weight_grad": head.weight.grad,
                "class_start": head.class_start, "num_local": head.num_local}, Path(out_dir) / f"{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["arc", "combined", "curricular"])
def test_two_workers_equal_full_softmax(tmp_path: Path, kind: str) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "init"), kind, str(tmp_path)), nprocs=WORLD, join=True)
    ref_loss, ref_backbone_grad, ref_centre_grad = _single_process(kind)
    shards = [torch.load(tmp_path / f"{r}.pt") for r in range(WORLD)]
    for shard in shards:
        assert shard["loss"] == pytest.approx(ref_loss, rel=1e-6)
        torch.testing.assert_close(shard["backbone_grad"], ref_backbone_grad, rtol=1e-6, atol=1e-12)
        lo, n = shard["class_start"], shard["num_local"]
        torch.testing.assert_close(shard["weight_grad"], ref_centre_grad[lo:lo + n], rtol=1e-6, atol=1e-12)
    assert [s["num_local"] for s in shards] == [6, 5]


def test_one_process_without_distributed_is_the_full_softmax() -> None:
    backbone, images, labels = _problem()
    head = PartialFC(ArcFace(64, 0.5), D, C).double()
    loss = head(backbone(images), labels)
    assert loss.item() == pytest.approx(_single_process("arc")[0], rel=1e-9)


def test_sampling_keeps_positives_and_matches_softmax_on_the_subset() -> None:
    torch.manual_seed(1)
    head = PartialFC(CosFace(64, 0.35), D, 100, sample_rate=0.1).double()
    emb = torch.randn(6, D, dtype=torch.float64)
    labels = torch.tensor([5, 5, 17, 42, 99, 0])
    loss = head(emb, labels)
    index = head.last_index
    assert len(index) == 10 and set(labels.tolist()) <= set(index.tolist())
    assert torch.equal(index, index.sort().values)
    sub = head.weight[index]
    cosine = linear(normalize(emb), normalize(sub)).clamp(-1, 1)
    sub_labels = torch.searchsorted(index, labels)
    expected = cross_entropy(CosFace(64, 0.35)(cosine, sub_labels), sub_labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-9)


def test_shards_cover_all_classes_once() -> None:
    for classes, world in [(11, 2), (100, 3), (7, 7)]:
        ranges = [shard_range(classes, r, world) for r in range(world)]
        starts = [s for s, _ in ranges]
        assert starts == sorted(starts) and sum(n for _, n in ranges) == classes
        assert all(s + n == nxt for (s, n), nxt in zip(ranges, [*starts[1:], classes], strict=True))


def test_bad_labels_are_a_clear_error() -> None:
    head = PartialFC(ArcFace(), D, C)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 11\), got 0\.\.11"):
        head(torch.randn(2, D), torch.tensor([0, 11]))


# --- margins against closed-form values -------------------------------------------------------------

def _apply(margin: torch.nn.Module, cos: float, label: int = 0, width: int = 3) -> torch.Tensor:
    logits = torch.full((1, width), 0.2, dtype=torch.float64)
    logits[0, label] = cos
    return margin(logits, torch.tensor([label]))


def test_arcface_closed_form() -> None:
    out = _apply(ArcFace(64, 0.5), 0.5)
    assert out[0, 0].item() == pytest.approx(64 * math.cos(math.pi / 3 + 0.5), rel=1e-9)
    assert out[0, 1].item() == pytest.approx(64 * 0.2)


def test_cosface_and_sphereface_closed_form() -> None:
    assert _apply(CosFace(64, 0.35), 0.5)[0, 0].item() == pytest.approx(64 * 0.15)
    sphere = CombinedMarginLoss(30, 2.0, 0.0, 0.0)
    assert _apply(sphere, 0.5)[0, 0].item() == pytest.approx(30 * math.cos(2 * math.pi / 3), rel=1e-9)
    combined = CombinedMarginLoss(64, 1.2, 0.3, 0.2)
    theta = math.acos(0.8)
    assert _apply(combined, 0.8)[0, 0].item() == pytest.approx(64 * (math.cos(1.2 * theta + 0.3) - 0.2), rel=1e-9)


def test_beyond_pi_the_target_keeps_decreasing() -> None:
    margin = ArcFace(1.0, 0.5)
    cos = torch.linspace(-1, 1, 2001, dtype=torch.float64)
    target = margin.target(cos)
    assert torch.all(target[1:] >= target[:-1])  # monotone in cos, i.e. decreasing in theta
    theta = math.acos(-0.95)  # theta + m > pi
    assert theta + 0.5 > math.pi
    assert margin.target(torch.tensor([-0.95], dtype=torch.float64)).item() == pytest.approx(
        -0.95 - (1 + math.cos(math.pi - 0.5)))


def test_rows_owned_elsewhere_are_only_scaled() -> None:
    logits = torch.tensor([[0.3, 0.4]], dtype=torch.float64)
    out = ArcFace(10, 0.5)(logits, torch.tensor([-1]))
    torch.testing.assert_close(out, logits * 10)


def test_curricularface_reweights_hard_negatives() -> None:
    margin = CurricularFace(1.0, 0.5)
    logits = torch.tensor([[0.6, 0.55, 0.1]], dtype=torch.float64)
    out = margin(logits, torch.tensor([0]))
    t = 0.01 * 0.6
    target = math.cos(math.acos(0.6) + 0.5)  # 0.143: the 0.55 negative is harder than this, 0.1 is not
    assert margin.t.item() == pytest.approx(t)
    assert out[0, 0].item() == pytest.approx(target, rel=1e-9)
    assert out[0, 1].item() == pytest.approx(0.55 * (t + 0.55), rel=1e-9)
    assert out[0, 2].item() == pytest.approx(0.1, rel=1e-9)


def test_cosine_to_centres_gradient_in_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The closed-form backward (no normalised copy of the centres) against numerical differentiation,
    with blocks smaller than the centres so that the blocked accumulation is exercised."""
    monkeypatch.setattr(partial_fc, "CENTRE_BLOCK", 3)
    gen = torch.Generator().manual_seed(0)
    unit = normalize(torch.randn(5, D, generator=gen, dtype=torch.float64)).requires_grad_()
    weight = torch.randn(C, D, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(partial_fc.cosine_to_centres, (unit, weight))
    torch.testing.assert_close(partial_fc.cosine_to_centres(unit, weight), linear(unit, normalize(weight)))
