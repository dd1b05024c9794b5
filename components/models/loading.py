"""Load a backbone: a train stage's folder (``backbone.pth`` + ``model.json``), or a run's starting point
(``train.init_from``: an arcface_torch ``backbone.pth``, a train folder, or an ONNX embedder)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.models import get_model
from components.models.onnx_backbone import ONNX_BACKBONE, embedding_size, from_onnx


def _load_state(model: nn.Module, weights_path: Path, what: str) -> None:
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved from a DDP-wrapped model
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights_path}: weights do not match {what}: {str(exc).splitlines()[0]}") from None


def load_backbone(model_dir: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """The model in eval mode and its config; a config that does not describe the weights is an error."""
    model_dir = Path(model_dir)
    config_path, weights_path = model_dir / "model.json", model_dir / "backbone.pth"
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found (the train stage writes backbone.pth and model.json)")
    config = json.loads(config_path.read_text())
    try:
        if config["backbone"] == ONNX_BACKBONE:
            model = from_onnx(model_dir / config["architecture"])
        else:
            model = get_model(config["backbone"], embedding_size=int(config["embedding_size"]))
    except KeyError as exc:
        raise ValueError(f"{config_path}: missing {exc}") from None
    _load_state(model, weights_path, f"{config_path} ({config['backbone']}, {config['embedding_size']}-d)")
    return model.eval(), config


def load_start(backbone: str, size: int, init_from: Path | str | None) -> nn.Module:
    """The backbone a run starts from, in train mode: random weights without ``init_from``; else the weights of
    ``init_from``, which must describe the same ``backbone`` and embedding ``size`` (checked, naming the file)."""
    if init_from is None:
        if backbone == ONNX_BACKBONE:
            raise ValueError("train.backbone onnx takes its architecture from train.init_from, which is not set")
        return get_model(backbone, size)
    path = Path(init_from)
    if path.suffix == ".onnx":
        if backbone != ONNX_BACKBONE:
            raise ValueError(f"{path}: an ONNX start model needs train.backbone onnx (got {backbone})")
        if (actual := embedding_size(path)) != size:
            raise ValueError(f"{path}: embeds to {actual} dimensions, train.embedding_size is {size}")
        return from_onnx(path).train()
    if path.is_dir():
        model, config = load_backbone(path)
        if (config["backbone"], int(config["embedding_size"])) != (backbone, size):
            raise ValueError(f"{path}: holds a {config['backbone']} {config['embedding_size']}-d backbone, "
                             f"train.backbone/embedding_size ask for {backbone} {size}-d")
        return model.train()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: train.init_from not found")
    if backbone == ONNX_BACKBONE:
        raise ValueError(f"{path}: train.backbone onnx needs an .onnx start model")
    model = get_model(backbone, size)
    _load_state(model, path, f"train.backbone {backbone} with train.embedding_size {size}")
    return model.train()
