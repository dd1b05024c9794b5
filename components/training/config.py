"""Everything one training run needs, as a plain picklable value (Ray ships it to every worker)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TrainConfig:
    data_dir: str
    out_dir: str
    backbone: str = "r18"  # or "onnx": the architecture of ``init_from``
    init_from: str | None = None  # start weights: backbone.pth, a train folder or an .onnx (models/loading.py)
    warm_centres: str | None = None  # .pt {centres [C, D], known [C]} carried from a registered version (centres.py)
    backbone_lr_scale: float = 1.0  # the backbone's learning rate relative to the head's ``lr``
    degrade_fraction: float = 0.0  # training faces degraded like the hard eval set (components/augment)
    teacher_targets: str | None = None  # [N, 2, D] .npy of a teacher's embeddings (components/training/distill.py)
    distill_weight: float = 1.0  # weight of the distillation term, 1 - cosine to the teacher
    compatible_weight: float = 0.0  # BCT's influence loss through the start's frozen classifier; 0 = none
    freeze_backbone_steps: int = 0  # first steps train the head only (a pretrained start's centres settle)
    freeze_batchnorm: bool = False  # BatchNorm keeps the start's running statistics (components/training/batchnorm)
    embedding_size: int = 512
    margin: Literal["combined", "curricular"] = "combined"
    s: float = 64.0
    m1: float = 1.0
    m2: float = 0.5
    m3: float = 0.0
    sample_rate: float = 1.0
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["poly", "cosine"] = "poly"
    warmup_steps: int = 0
    epochs: int = 1
    max_steps: int = 0  # 0 = epochs x steps per epoch
    batch_size: int = 64  # per worker
    grad_accumulation: int = 1
    grad_clip: float = 5.0  # 0 = off; the backbone's gradient norm (components/training/loop.optimiser_step)
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    channels_last: bool = False  # NHWC backbone and images: faster convolutions on tensor-core GPUs
    compile: bool = False  # torch.compile the backbone (in place: checkpoint keys unchanged)
    num_workers: int = 2
    use_gpu: bool = False
    loader_workers: int = 1
    seed: int = 0
    checkpoint_every: int = 100
    max_failures: int = 2
    nonfinite_limit: int = 5
    log_every: int = 10
    replica_check_every: int = 100  # steps between checks that data-parallel replicas are identical; 0 = off
