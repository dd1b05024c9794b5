"""Running a checkout of arcface_torch side by side with faceforge (benchmarks, the parity reference).

``$ARCFACE_TORCH`` names the checkout (insightface/recognition/arcface_torch); faceforge ships none of its code.
"""

from __future__ import annotations

import os
import sys

ENV = "ARCFACE_TORCH"


def available() -> bool:
    return bool(os.environ.get(ENV))


def make_importable(cpu: bool) -> None:
    """Its modules (``backbones``, ``losses``, ``partial_fc_v2``, ``lr_scheduler``) importable as-is: on the path,
    ``.cuda()`` a no-op for a CPU run of its GPU-only code, and its scheduler's ``verbose`` argument, which
    current torch's LRScheduler no longer takes, accepted and dropped."""
    import torch

    if os.environ[ENV] not in sys.path:
        sys.path.insert(0, os.environ[ENV])
    if cpu:
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    original = torch.optim.lr_scheduler.LRScheduler.__init__
    if getattr(original, "_drops_verbose", False):
        return

    def init(self, optimizer, last_epoch=-1, verbose=None):  # noqa: ANN001, ANN202, ARG001
        original(self, optimizer, last_epoch)

    init._drops_verbose = True
    torch.optim.lr_scheduler.LRScheduler.__init__ = init
