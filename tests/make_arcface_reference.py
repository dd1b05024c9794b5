"""Write tests/data/arcface_parity.pt: arcface_torch's training step on the inputs of tests/arcface_parity.py.

Run once, by hand, with a checkout of arcface_torch (not shipped with faceforge)::

    ARCFACE_TORCH=/path/to/insightface/recognition/arcface_torch uv run python -m tests.make_arcface_reference

The committed file was made from deepinsight/insightface 7fadd420c2351d0ffa8cac403421c1a3ed733365
(2026-07-27), recognition/arcface_torch: ``backbones.get_model``, ``losses.CombinedMarginLoss``,
``partial_fc_v2.PartialFC_V2``, ``lr_scheduler.PolynomialLRWarmup`` and the step of ``train_v2.py`` in fp32
(``loss.backward(); clip_grad_norm_(backbone.parameters(), 5); opt.step(); opt.zero_grad();
lr_scheduler.step()`` with ``SGD(momentum=0.9, weight_decay)`` over backbone + head) — one process, without
DDP (whose ``fp16_compress_hook`` only rounds the all-reduced gradient), in float64, on CPU (its ``.cuda()``
calls made no-ops). Each step records the learning rate used, the Partial FC classes sampled, the loss and
the backbone's gradient norm before the clip; after the last step, the summary of tests/arcface_parity.py.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.distributed as dist

from bench import arcface_torch
from tests.arcface_parity import (
    CASES,
    CLASSES,
    CLIP,
    EMBEDDING,
    LR,
    MOMENTUM,
    REFERENCE,
    STEPS,
    TOTAL,
    WARMUP,
    WEIGHT_DECAY,
    batch,
    case_name,
    initial_backbone,
    initial_centres,
    summary,
)


def _case(backbone_name: str, margin: tuple[float, float, float], rate: float) -> dict:
    from backbones import get_model
    from losses import CombinedMarginLoss
    from lr_scheduler import PolynomialLRWarmup
    from partial_fc_v2 import PartialFC_V2

    backbone = get_model(backbone_name, dropout=0.0, fp16=False, num_features=EMBEDDING)
    backbone.load_state_dict(initial_backbone(backbone_name).state_dict(), strict=True)
    head = PartialFC_V2(CombinedMarginLoss(64, *margin), EMBEDDING, CLASSES, rate, False)
    with torch.no_grad():
        head.weight.copy_(initial_centres())
    opt = torch.optim.SGD(params=[{"params": backbone.parameters()}, {"params": head.parameters()}],
                          lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    scheduler = PolynomialLRWarmup(optimizer=opt, warmup_iters=WARMUP, total_iters=TOTAL)
    backbone.train()
    steps = []
    for step in range(STEPS):
        images, labels = batch(step)
        lr = opt.param_groups[0]["lr"]
        sampler_state = torch.get_rng_state()  # PartialFC_V2 samples with the global generator
        loss = head(backbone(images), labels.clone())
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(backbone.parameters(), CLIP)
        opt.step()
        opt.zero_grad()
        scheduler.step()
        steps.append({"lr": lr, "loss": float(loss), "grad_norm": float(grad_norm),
                      "sampler_state": sampler_state if rate < 1 else None,
                      "sampled": head.weight_index.clone() if rate < 1 else None})
    return {"steps": steps, **summary(backbone, head.weight, opt.state[head.weight]["momentum_buffer"])}


def main() -> None:
    arcface_torch.make_importable(cpu=True)
    torch.set_default_dtype(torch.float64)  # its buffers (all-gather, loss, one-hot) follow the default dtype
    with tempfile.TemporaryDirectory() as tmp:
        dist.init_process_group("gloo", init_method=f"file://{tmp}/init", rank=0, world_size=1)
        reference = {case_name(*case): _case(*case) for case in CASES}
        dist.destroy_process_group()
    Path(REFERENCE).parent.mkdir(parents=True, exist_ok=True)
    torch.save(reference, REFERENCE)
    for name, case in reference.items():
        print(name, [round(s["loss"], 4) for s in case["steps"]], [round(s["grad_norm"], 2) for s in case["steps"]])


if __name__ == "__main__":
    main()
