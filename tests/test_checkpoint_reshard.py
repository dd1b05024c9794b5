"""Checkpoints re-shard class centres and their optimiser state across worker counts: 2->1, 1->2, 2->3
(the last with a sampled head, whose lazily updated rows a checkpoint holds materialised)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from components.heads import ArcFace, PartialFC
from components.models import get_model
from components.training.checkpoint import load_checkpoint
from components.training.config import TrainConfig
from components.training.loop import train_worker
from components.training.optim import build_optimizer, build_scheduler
from components.training.sessions import LocalSession
from tests.training_data import write_tiny_faces

pytestmark = pytest.mark.slow  # a heavy module: scheduled among the first (tests/conftest.py)

CLASSES = 7


def _init(rank: int, world: int, init_file: str) -> None:
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)


def _train(rank: int, world: int, init_file: str, cfg: TrainConfig, root: str) -> None:
    _init(rank, world, init_file)
    train_worker(cfg, LocalSession(Path(root)))
    if world > 1:
        dist.destroy_process_group()


def _load(rank: int, world: int, init_file: str, cfg: TrainConfig, checkpoint: str, out: str) -> None:
    _init(rank, world, init_file)
    backbone = get_model(cfg.backbone, cfg.embedding_size)
    head = PartialFC(ArcFace(), cfg.embedding_size, CLASSES, cfg.sample_rate)
    optimizer = build_optimizer(backbone, head, cfg)
    step, _ = load_checkpoint(Path(checkpoint), backbone, head, optimizer, build_scheduler(optimizer, cfg, 10))
    momentum = optimizer.state[head.weight]["momentum_buffer"]
    torch.save({"start": head.class_start, "weight": head.weight.detach(), "momentum": momentum, "step": step},
               Path(out) / f"{world}_{rank}.pt")
    if world > 1:
        dist.destroy_process_group()


def _full(directory: Path, prefix: str, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    parts = sorted((torch.load(directory / f"{prefix}{r}.pt", weights_only=False) for r in range(world)),
                   key=lambda p: p.get("start", p.get("class_start")))
    momentum_key = "momentum" if "momentum" in parts[0] else None
    weight = torch.cat([p["weight"] for p in parts])
    momentum = (torch.cat([p["momentum"] for p in parts]) if momentum_key
                else torch.cat([p["optimizer"]["momentum_buffer"] for p in parts]))
    return weight, momentum


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_faces(tmp_path_factory.mktemp("faces") / "packed", classes=CLASSES, per_class=6)


@pytest.mark.parametrize(("trained_on", "resumed_on", "rate"), [(2, 1, 1.0), (1, 2, 1.0), (2, 3, 0.5)])
def test_resume_on_a_different_worker_count(tmp_path: Path, data: Path, trained_on: int, resumed_on: int,
                                            rate: float) -> None:
    cfg = TrainConfig(data_dir=str(data), out_dir=str(tmp_path), backbone="mbf", embedding_size=32,
                      batch_size=4, max_steps=2, checkpoint_every=2, loader_workers=0, lr=0.05, sample_rate=rate)
    mp.spawn(_train, args=(trained_on, str(tmp_path / "init_a"), cfg, str(tmp_path / "ckpt")), nprocs=trained_on)
    checkpoint = tmp_path / "ckpt" / "checkpoint_00000002"
    saved_weight, saved_momentum = _full(checkpoint, "head_rank", trained_on)
    assert saved_momentum.abs().sum() > 0  # the optimiser really has state to carry over

    mp.spawn(_load, args=(resumed_on, str(tmp_path / "init_b"), cfg, str(checkpoint), str(tmp_path)),
             nprocs=resumed_on)
    weight, momentum = _full(tmp_path, f"{resumed_on}_", resumed_on)
    torch.testing.assert_close(weight, saved_weight, rtol=0, atol=0)
    torch.testing.assert_close(momentum, saved_momentum, rtol=0, atol=0)
    assert torch.load(tmp_path / f"{resumed_on}_0.pt", weights_only=False)["step"] == 2


def test_checkpoint_for_another_class_count_is_refused(tmp_path: Path, data: Path) -> None:
    cfg = TrainConfig(data_dir=str(data), out_dir=str(tmp_path), backbone="mbf", embedding_size=32,
                      batch_size=4, max_steps=1, checkpoint_every=1, loader_workers=0)
    train_worker(cfg, LocalSession(tmp_path / "ckpt"))
    backbone = get_model("mbf", 32)
    head = PartialFC(ArcFace(), 32, CLASSES + 1)
    optimizer = build_optimizer(backbone, head, cfg)
    with pytest.raises(ValueError, match="7 classes"):
        load_checkpoint(tmp_path / "ckpt" / "checkpoint_00000001", backbone, head, optimizer, None)
