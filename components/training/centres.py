"""Class centres that start where the initial backbone already puts each class.

Starting a pretrained backbone with random centres makes the first steps' margin loss huge and its gradient
pushes every embedding towards arbitrary directions, undoing what the backbone knew before the centres have
moved. Starting each centre at its class's L2-normalised mean embedding (under the initial backbone, eval
mode, no flip, no augmentation) gives a small first loss and gradients that refine rather than wreck (docs/training.md).
Each worker embeds only the faces of the classes it owns, so the cost is split like the head.

A warm retrain (continuing from a registered version's train output) keeps the centres of the identities that
version already learned, matched by name, so only the new identities need embedding, and drops the centres of
identities no longer in the data.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.functional import normalize
from torch.utils.data import DataLoader, Subset

from components.recordio.dataset import FaceRecordDataset


@torch.no_grad()
def class_mean_centres(backbone: nn.Module, dataset: FaceRecordDataset, start: int, count: int, embedding_size: int,
                       batch_size: int, device: torch.device, skip: torch.Tensor | None = None,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(centres [count, D], has_faces [count] bool) for classes ``[start, start + count)`` of ``dataset`` (give
    it without flips or augmentation); a class without faces, or marked in ``skip`` [count], has no centre
    (``has_faces`` False, zeros)."""
    wanted = torch.ones(count, dtype=torch.bool) if skip is None else ~skip
    indices = [i for i in range(len(dataset)) if start <= dataset.label(i) < start + count
               and wanted[dataset.label(i) - start]]
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


def carried_centres(old_centres: torch.Tensor, old_identities: list[str],
                    new_identities: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(centres [len(new), D], known [len(new)] bool): the earlier run's centre of every identity it knew, by
    name; zeros where ``known`` is False (a new identity: it starts at its class mean). Identities the earlier run
    knew and the data no longer has are dropped."""
    if len(old_identities) != len(old_centres):
        raise ValueError(f"{len(old_identities)} identity names for {len(old_centres)} class centres")
    row = {name: i for i, name in enumerate(old_identities)}
    known = torch.tensor([name in row for name in new_identities], dtype=torch.bool)
    centres = torch.zeros(len(new_identities), old_centres.shape[1], dtype=old_centres.dtype)
    if known.any():
        centres[known] = old_centres[[row[n] for n in new_identities if n in row]]
    return centres, known
