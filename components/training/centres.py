"""Class centres that start where the initial backbone already puts each class.

Starting a pretrained backbone with random centres makes the first steps' margin loss huge and its gradient
pushes every embedding towards arbitrary directions, undoing what the backbone knew before the centres have
moved. Starting each centre at its class's L2-normalised mean embedding (under the initial backbone, eval
mode, no flip, no augmentation) gives a small first loss and gradients that refine rather than wreck (docs/training.md).
Each worker embeds only the faces of the classes it owns, so the cost is split like the head.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import normalize
from torch.utils.data import DataLoader, Subset

from components.recordio.insightface import FaceRecordDataset


@torch.no_grad()
def class_mean_centres(backbone: nn.Module, dataset: FaceRecordDataset, start: int, count: int, embedding_size: int,
                       batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(centres [count, D], has_faces [count] bool) for classes ``[start, start + count)`` of ``dataset`` (give
    it without flips or augmentation); a class without faces has no centre (``has_faces`` False, zeros)."""
    indices = [i for i in range(len(dataset)) if start <= dataset.label(i) < start + count]
    was_training = backbone.training
    backbone.eval()
    sums = torch.zeros(count, embedding_size)
    seen = torch.zeros(count, dtype=torch.bool)
    try:
        for images, labels in DataLoader(Subset(dataset, indices), batch_size=batch_size):
            embeddings = normalize(backbone(images.to(device)).float()).cpu()
            sums.index_add_(0, labels - start, embeddings)
            seen[labels - start] = True
    finally:
        backbone.train(was_training)
    return normalize(sums), seen
