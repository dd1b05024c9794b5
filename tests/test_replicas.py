"""[I] Data-parallel replicas stay one model under the gradient clip, and a step on 2 workers is a step on 1.

The clip is over the backbone's gradient norm (as arcface_torch): DDP made that gradient identical on every
worker, so the factor is too. It once included each worker's own head shard, and the copies drifted apart
(up to 1.1e-3 after 16 steps) while only rank 0's was saved.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from components.heads import ArcFace, PartialFC
from components.models import get_model
from components.training.config import TrainConfig
from components.training.loop import optimiser_step, train_worker
from components.training.optim import build_optimizer
from components.training.replicas import ReplicaDivergence, check_replicas
from components.training.sessions import LocalSession
from tests.training_data import write_tiny_faces

pytestmark = pytest.mark.slow  # a heavy module: scheduled among the first (tests/conftest.py)

WORLD = 2


def _init(rank: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)


def _train(rank: int, init_file: str, data: str, out: str) -> None:
    _init(rank, init_file)
    # A clip of 0.05 binds on every step; the replica check runs after every step and would stop the run.
    cfg = TrainConfig(data_dir=data, out_dir=out, backbone="mbf", embedding_size=32, batch_size=4, max_steps=8,
                      checkpoint_every=100, log_every=100, loader_workers=0, lr=0.1, sample_rate=0.5,
                      grad_clip=0.05, replica_check_every=1, num_workers=WORLD)
    session = LocalSession(Path(out) / f"ckpt{rank}")
    backbone_holder: dict[str, torch.nn.Module] = {}
    wrap = session.wrap_model
    session.wrap_model = lambda m: backbone_holder.setdefault("m", wrap(m))  # keep this worker's copy
    train_worker(cfg, session)
    torch.save(backbone_holder["m"].module.state_dict(), Path(out) / f"backbone{rank}.pt")
    dist.destroy_process_group()


def test_backbone_copies_stay_bitwise_identical_with_the_clip_binding(tmp_path: Path) -> None:
    data = write_tiny_faces(tmp_path / "packed", classes=6, per_class=8)
    mp.spawn(_train, args=(str(tmp_path / "init"), str(data), str(tmp_path)), nprocs=WORLD, join=True)
    first, second = (torch.load(tmp_path / f"backbone{r}.pt") for r in range(WORLD))
    for name, value in first.items():
        if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue  # BatchNorm statistics are per worker under DDP, as in arcface_torch; not parameters
        assert torch.equal(value, second[name]), name
    assert any(not torch.equal(first[k], get_model("mbf", 32).state_dict()[k]) for k in first)  # it trained


C, D, GLOBAL_BATCH = 10, 16, 8


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return torch.randn(GLOBAL_BATCH, 3, 112, 112, generator=g, dtype=torch.float64), \
        torch.tensor([0, 3, 3, 9, 5, 6, 1, 8])


def _one_step(backbone: torch.nn.Module, head: PartialFC, images: torch.Tensor, labels: torch.Tensor,
              clip: float) -> dict[str, torch.Tensor]:
    cfg = TrainConfig(data_dir="", out_dir="", lr=0.1, momentum=0.9, weight_decay=5e-4)
    optimizer = build_optimizer(backbone, head, cfg)
    head(backbone(images), labels).backward()
    optimiser_step(optimizer, torch.amp.GradScaler("cpu", enabled=False), backbone, clip)
    inner = backbone.module if hasattr(backbone, "module") else backbone
    return {"backbone": torch.cat([p.detach().flatten() for p in inner.parameters()]),
            "centres": head.weight.detach().clone(), "class_start": torch.tensor(head.class_start)}


def _models() -> tuple[torch.nn.Module, PartialFC]:
    torch.manual_seed(0)
    # BatchNorm in eval mode: batch statistics of 4 faces (per worker) and of 8 (one worker) would differ by
    # construction; this compares the optimiser, the clip and the model-parallel head, not BatchNorm.
    backbone = get_model("mbf", D).double().eval()
    return backbone, PartialFC(ArcFace(64, 0.5), D, C, sample_rate=1.0).double()


def _step_on_two(rank: int, init_file: str, out: str, clip: float) -> None:
    _init(rank, init_file)
    backbone, head = _models()
    images, labels = _batch()
    part = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
    ddp = torch.nn.parallel.DistributedDataParallel(backbone)
    torch.save(_one_step(ddp, head, images[part], labels[part], clip), Path(out) / f"step{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("clip", [0.0, 0.5])  # 0.5 binds: the backbone gradient norm is larger here
def test_one_step_on_two_workers_equals_one_step_on_one(tmp_path: Path, clip: float) -> None:
    mp.spawn(_step_on_two, args=(str(tmp_path / "init"), str(tmp_path), clip), nprocs=WORLD, join=True)
    backbone, head = _models()
    images, labels = _batch()
    grad_norm_probe = _models()
    grad_norm_probe[1](grad_norm_probe[0](images), labels).backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in grad_norm_probe[0].parameters()])
    assert clip == 0.0 or norm > clip  # the clip really binds in the clipped case
    reference = _one_step(backbone, head, images, labels, clip)
    shards = [torch.load(tmp_path / f"step{r}.pt") for r in range(WORLD)]
    for shard in shards:
        torch.testing.assert_close(shard["backbone"], reference["backbone"], rtol=1e-6, atol=1e-12)
        start, rows = int(shard["class_start"]), len(shard["centres"])
        torch.testing.assert_close(shard["centres"], reference["centres"][start:start + rows], rtol=1e-6,
                                   atol=1e-12)
    assert sum(len(s["centres"]) for s in shards) == C


def _diverge(rank: int, init_file: str) -> None:
    _init(rank, init_file)
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 4)
    check_replicas(model, step=7)  # identical: passes
    if rank == 1:
        with torch.no_grad():
            model.weight[0, 0] += 1e-6
    with pytest.raises(ReplicaDivergence, match=r"step 12: the backbone copies of workers \[1\] differ"):
        check_replicas(model, step=12)
    dist.destroy_process_group()


def test_the_guard_stops_diverged_replicas_naming_the_step(tmp_path: Path) -> None:
    mp.spawn(_diverge, args=(str(tmp_path / "init"),), nprocs=WORLD, join=True)
