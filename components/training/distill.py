"""Knowledge distillation: the student learns its margin loss plus agreement with a teacher's embedding.

The teacher (any embedder in the served contract, e.g. the import_model stage's SFace) embeds every training
crop once, as given and mirrored, before training (``teacher_targets``): the flip is the only augmentation that
changes what a clean crop shows, and a degraded crop (``degrade_fraction``) is taught the clean crop's
embedding, which is the invariance the hard set measures. An epoch then costs the student alone, instead of a
teacher forward per sample and epoch. Where the sizes differ, a learned linear projection maps the student's
embedding into the teacher's space; the distillation term is ``distill_weight * (1 - cosine)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.functional import cosine_similarity
from torch.utils.data import Dataset

from components.evaluation.embedders import OnnxEmbedder
from components.heads.dist import all_reduce, rank_and_world
from components.recordio.dataset import FaceRecordDataset


def teacher_targets(teacher: Path, dataset: FaceRecordDataset, batch_size: int = 64) -> np.ndarray:
    """[N, 2, D] float32: the teacher's L2-normalised embedding of every crop, as stored and mirrored."""
    embed = OnnxEmbedder(teacher)
    out: list[np.ndarray] = []
    for start in range(0, len(dataset), batch_size):
        rgb = np.stack([dataset.read(i)[0] for i in range(start, min(start + batch_size, len(dataset)))])
        pair = np.stack([embed(rgb), embed(rgb[:, :, ::-1])], axis=1)  # NHWC: axis 2 is the width
        out.append(pair / np.linalg.norm(pair, axis=2, keepdims=True))
    return np.concatenate(out).astype(np.float32)


class WithTeacherTargets(Dataset):
    """``dataset``'s (image, label) plus the teacher's embedding of that crop, mirrored when the image is."""

    def __init__(self, dataset: FaceRecordDataset, targets: np.ndarray) -> None:
        if len(targets) != len(dataset):
            raise ValueError(f"{len(targets)} teacher embeddings for {len(dataset)} faces")
        if dataset.random_flip and dataset.seed is None:
            raise ValueError("distillation needs a seeded dataset: the flip must be known to pick the target")
        self.dataset, self.targets = dataset, targets

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        image, label = self.dataset[i]
        mirrored = self.dataset.random_flip and self.dataset.flipped(i)  # the draw __getitem__ just made
        return image, label, torch.from_numpy(np.array(self.targets[i, int(mirrored)]))


class Distillation(nn.Module):
    """The distillation term, with the projection (student size -> teacher size) it learns where they differ."""

    def __init__(self, student_size: int, teacher_size: int, weight: float) -> None:
        super().__init__()
        self.weight = weight
        self.projection = (nn.Linear(student_size, teacher_size, bias=False) if student_size != teacher_size
                           else nn.Identity())

    def forward(self, embeddings: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return self.weight * (1.0 - cosine_similarity(self.projection(embeddings.float()), targets, dim=1)).mean()

    def average_gradients(self) -> None:
        """Workers see different faces: average the projection's gradient as DDP does the backbone's, so that
        every replica takes the same step."""
        world = rank_and_world()[1]
        for p in self.parameters():
            if p.grad is not None and world > 1:
                all_reduce(p.grad).div_(world)
