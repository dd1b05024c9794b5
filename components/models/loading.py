"""Load a trained backbone from the train stage's folder (``backbone.pth`` + ``model.json``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.models import get_model


def load_backbone(model_dir: Path | str) -> tuple[nn.Module, dict[str, Any]]:
    """The model in eval mode and its config; a config that does not describe the weights is an error."""
    model_dir = Path(model_dir)
    config_path, weights_path = model_dir / "model.json", model_dir / "backbone.pth"
    for p in (config_path, weights_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: not found (the train stage writes backbone.pth and model.json)")
    config = json.loads(config_path.read_text())
    try:
        model = get_model(config["backbone"], embedding_size=int(config["embedding_size"]))
    except KeyError as exc:
        raise ValueError(f"{config_path}: missing {exc}") from None
    state = torch.load(weights_path, map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{weights_path}: weights do not match {config_path} "
                         f"({config['backbone']}, {config['embedding_size']}-d): {str(exc).splitlines()[0]}") from None
    return model.eval(), config
