"""BatchNorm statistics: re-estimated after a run from random weights ("precise BN"), kept during a fine-tune.

During training each BatchNorm keeps an exponential moving average (momentum 0.1) of batch statistics that
lag the weights. After a long run the lag is negligible; after a short one (fine-tuning, the demo's few
steps) the averages still carry their initial values, and in eval mode the network then collapses to a nearly
constant embedding (measured on the demo: 10-fold accuracy 49% -> 71% after re-estimation). A forward pass
over a few thousand training faces with cumulative averaging fixes that at the cost of inference only.

A pretrained start is the opposite case: its statistics were estimated on millions of faces, and a fine-tune's
few steps on a few hundred (degraded) faces would pull every running average most of the way to that
small batch's (momentum 0.1: 57% after 8 steps), which is precise BN on the wrong data. ``freeze_batchnorm``
keeps them: the layers normalise with the start's statistics in training as in serving, and their scale and
shift still learn.
"""

from __future__ import annotations

import torch
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, Dataset, RandomSampler


class _ImagesOnly(Dataset):
    """``update_bn`` feeds whatever the loader yields to the model, so drop the labels."""

    def __init__(self, faces: Dataset) -> None:
        self.faces = faces

    def __len__(self) -> int:
        return len(self.faces)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.faces[i][0]


def freeze_batchnorm(backbone: torch.nn.Module) -> int:
    """Put every BatchNorm of ``backbone`` in eval mode (running statistics used, never updated); returns how
    many. Call it after anything that sets the whole module's mode (``Module.train`` recurses)."""
    layers = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for layer in layers:
        layer.eval()
    return len(layers)


def recalibrate_batchnorm(backbone: torch.nn.Module, faces: Dataset, samples: int, batch_size: int = 64,
                          seed: int = 0) -> int:
    """Replace running statistics with exact averages over ``samples`` random training faces; returns the count."""
    n = min(samples, len(faces))  # type: ignore[arg-type]
    if n == 0:
        return 0
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(_ImagesOnly(faces), batch_size=batch_size, drop_last=n > batch_size,
                        sampler=RandomSampler(faces, num_samples=n, generator=generator))  # type: ignore[arg-type]
    update_bn(loader, backbone)
    backbone.eval()
    return n
