"""Backward-compatible training (Shen et al., "Towards Backward-Compatible Representation Learning", CVPR 2020).

A new model is *compatible* with an old one when its probes can be compared with the old model's templates:
M(new probe, old gallery) > M(old probe, old gallery) (BCT's criterion, measured for every candidate by
components/evaluation/compatibility.py). BCT gets there with an *influence loss*: next to its own margin loss,
the new backbone's embeddings are also classified by the old model's classifier, frozen. A warm retrain starts
its head from exactly that classifier: the old version's centres of the people it knew (carried by name) and,
for new people, the old model's mean embedding of their faces (components/training/centres.py). So the frozen
classifier is a copy of the head as the warm start leaves it, before the first step; it is rebuilt the same
way on a resume (it is a function of the start and the data, not of the run), and it is never checkpointed.

The new head still learns (the new model may improve); only the influence term ties the embedding space to
the old one. ``train.compatible_with: start`` turns it on for a warm retrain (docs/training.md).
"""

from __future__ import annotations

import torch

from components.heads.partial_fc import PartialFC


def frozen_classifier(head: PartialFC) -> PartialFC:
    """A copy of ``head``'s current centres that no optimiser sees and no gradient reaches: the old model's
    classifier for the influence loss. A new module (not a deepcopy) so that its row reads are its own."""
    frozen = PartialFC(head.margin_softmax, head.embedding_size, head.num_classes, head.sample_rate)
    with torch.no_grad():
        frozen.weight.copy_(head.weight)
    frozen.weight.requires_grad_(False)
    return frozen.to(head.weight.device)
