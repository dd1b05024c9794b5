"""A tiny packed training set from the bundled real faces (no detection needed: fast for tests)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from components.heads.partial_fc import PartialFC
from components.recordio.insightface import write_face_dataset
from components.sample.orl import load_orl_face
from components.training import loop
from components.training.sessions import LocalSession


def write_tiny_faces(root: Path, classes: int = 6, per_class: int = 8, first_subject: int = 1) -> Path:
    """ORL subjects ``first_subject`` .. ``first_subject + classes - 1`` as labels 0.., named ``s<NN>`` in
    ``identities.csv`` as the pack stage names them."""
    root.mkdir(parents=True, exist_ok=True)
    samples = []
    for label in range(classes):
        for index in range(1, per_class + 1):
            face = load_orl_face(first_subject + label, index)
            grey = cv2.resize(face, (112, 112), interpolation=cv2.INTER_LINEAR)
            ok, buf = cv2.imencode(".jpg", np.repeat(grey[:, :, None], 3, axis=2))
            assert ok
            samples.append((label, buf.tobytes()))
    write_face_dataset(root, samples, classes)
    (root / "identities.csv").write_text("label,identity,images\n" + "".join(
        f"{label},s{first_subject + label:02d},{per_class}\n" for label in range(classes)))
    return root


def watching_session(monkeypatch: pytest.MonkeyPatch, checkpoint_root: Path) -> LocalSession:
    """A local session that keeps the backbone and the head as training receives them, before step 1:
    ``start_state``, ``start_centres``, ``backbone`` and ``head`` (which training then moves)."""
    heads: list[PartialFC] = []
    monkeypatch.setattr(loop, "PartialFC", lambda *a, **k: heads.append(PartialFC(*a, **k)) or heads[-1])

    class Watching(LocalSession):
        def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
            self.start_state = {k: v.clone() for k, v in model.state_dict().items()}
            self.head = heads[-1]
            self.start_centres = self.head.weight.detach().clone()
            self.backbone = model
            return super().wrap_model(model)

    return Watching(checkpoint_root)
