"""Training checkpoints that survive a change in the number of workers.

Layout of one checkpoint directory (Ray Train merges every worker's files into it):

* ``trainer.pt`` (rank 0): backbone ``state_dict``, optimiser state of the backbone parameters,
  scheduler, step, RNG state; backbone state is replicated under DDP, so one copy suffices.
* ``head_rank{r}.pt`` (every rank): this worker's class centres, their optimiser state and the class
  range they cover.
* ``meta.json``: world size, number of classes, step.

Resuming with W' workers reads, for each new shard, the rows it needs from whichever old shards hold
them, so 2 -> 1, 1 -> 2 and 2 -> 3 all work (arcface_torch can only resume on the same world size).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.heads.partial_fc import PartialFC

TRAINER = "trainer.pt"
META = "meta.json"


def _head_file(rank: int) -> str:
    return f"head_rank{rank}.pt"


def _split_optimizer_state(optimizer: torch.optim.Optimizer, head_param: nn.Parameter) -> tuple[dict, dict]:
    """(state dict without the head parameter, the head parameter's own state)."""
    full = optimizer.state_dict()
    ids = [p for group in optimizer.param_groups for p in group["params"]]
    head_index = next(i for i, p in enumerate(ids) if p is head_param)
    head_state = full["state"].get(head_index, {})
    rest = {"state": {k: v for k, v in full["state"].items() if k != head_index},
            "param_groups": full["param_groups"]}
    return rest, {"index": head_index, "state": head_state}


def save_checkpoint(directory: Path, rank: int, world_size: int, backbone: nn.Module, head: PartialFC,
                    optimizer: torch.optim.Optimizer, scheduler: Any, step: int, extra: dict | None = None) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rest, head_state = _split_optimizer_state(optimizer, head.weight)
    torch.save({"class_start": head.class_start, "num_local": head.num_local, "weight": head.weight.detach().cpu(),
                "optimizer": {k: v.cpu() if torch.is_tensor(v) else v for k, v in head_state["state"].items()},
                "margin": head.margin_softmax.state_dict(), "sampler": head._sampler.get_state()},
               directory / _head_file(rank))
    if rank == 0:
        module = backbone.module if hasattr(backbone, "module") else backbone
        torch.save({"backbone": module.state_dict(), "optimizer": rest, "head_index": head_state["index"],
                    "scheduler": scheduler.state_dict() if scheduler is not None else None, "step": step,
                    "torch_rng": torch.get_rng_state(), "extra": extra or {}}, directory / TRAINER)
        (directory / META).write_text(json.dumps({"world_size": world_size, "num_classes": head.num_classes,
                                                  "embedding_size": head.embedding_size, "step": step}))


def read_meta(directory: Path) -> dict[str, Any]:
    return json.loads((Path(directory) / META).read_text())


def _gather_rows(directory: Path, old_world: int, start: int, count: int, own_rank: int) -> dict[str, Any]:
    """Rows ``[start, start+count)`` of the centres and of every per-row optimiser tensor, plus the
    sampler state old shard ``own_rank`` saved (meaningful only when the world size is unchanged)."""
    weights, states, margin, sampler = [], {}, None, None
    for rank in range(old_world):
        # mmap: a worker reads only the rows it needs, not every old shard in full
        shard = torch.load(Path(directory) / _head_file(rank), map_location="cpu", weights_only=False, mmap=True)
        lo = max(start, shard["class_start"])
        hi = min(start + count, shard["class_start"] + shard["num_local"])
        if margin is None:
            margin = shard["margin"]
        if rank == own_rank:
            sampler = shard["sampler"]
        if lo >= hi:
            continue
        rows = slice(lo - shard["class_start"], hi - shard["class_start"])
        weights.append(shard["weight"][rows])
        for key, value in shard["optimizer"].items():
            per_row = torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == shard["num_local"]
            if per_row:
                states.setdefault(key, []).append(value[rows])
            else:
                states[key] = value  # scalars such as Adam's step are the same on every shard
    merged = {k: torch.cat(v) if isinstance(v, list) else v for k, v in states.items()}
    return {"weight": torch.cat(weights), "optimizer": merged, "margin": margin, "sampler": sampler}


def all_centres(directory: Path) -> torch.Tensor:
    """Every class centre of a checkpoint, ``[num_classes, embedding_size]``, whatever its world size."""
    meta = read_meta(directory)
    return _gather_rows(directory, meta["world_size"], 0, meta["num_classes"], 0)["weight"]


def load_checkpoint(directory: Path, backbone: nn.Module, head: PartialFC, optimizer: torch.optim.Optimizer,
                    scheduler: Any) -> tuple[int, dict[str, Any]]:
    """Restore everything into freshly built objects (any world size); returns (step, extra)."""
    directory = Path(directory)
    meta = read_meta(directory)
    if meta["num_classes"] != head.num_classes or meta["embedding_size"] != head.embedding_size:
        raise ValueError(f"{directory}: checkpoint has {meta['num_classes']} classes x {meta['embedding_size']}-d, "
                         f"the run has {head.num_classes} x {head.embedding_size}")
    trainer = torch.load(directory / TRAINER, map_location="cpu", weights_only=False)
    module = backbone.module if hasattr(backbone, "module") else backbone
    module.load_state_dict(trainer["backbone"], strict=True)
    rows = _gather_rows(directory, meta["world_size"], head.class_start, head.num_local, head.rank)
    with torch.no_grad():
        head.weight.copy_(rows["weight"].to(head.weight.dtype))
    head.margin_softmax.load_state_dict(rows["margin"])
    full = {"state": dict(trainer["optimizer"]["state"]), "param_groups": trainer["optimizer"]["param_groups"]}
    if rows["optimizer"]:
        full["state"][trainer["head_index"]] = rows["optimizer"]
    optimizer.load_state_dict(full)
    if scheduler is not None and trainer["scheduler"] is not None:
        scheduler.load_state_dict(trainer["scheduler"])
    torch.set_rng_state(trainer["torch_rng"])
    if meta["world_size"] == head.world_size:
        head._sampler.set_state(rows["sampler"])
    return int(trainer["step"]), trainer["extra"]

