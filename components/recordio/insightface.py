"""InsightFace's face-dataset layout on RecordIO, as in MS1MV3 / Glint360K, and a PyTorch Dataset for it.

Keys ``1..N`` are images (``IRHeader.label`` = class id, scalar or first element of an array), sorted by
class. Key ``0`` is a header record with ``flag=2, label=(N+1, N+1+C)``: the key range of one record
per class, each holding ``label=(first image key, end image key)``. ``property`` says ``C,H,W``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from components.align.similarity import ARCFACE_TEMPLATE
from components.augment.degrade import ALIGNED_KINDS, degrade
from components.recordio.format import RecordIOError, RecordReader, RecordWriter, pack_header, unpack_header


def write_face_dataset(out_dir: Path, samples: Iterable[tuple[int, bytes]], num_classes: int,
                       image_size: int = 112) -> int:
    """Write ``train.rec``/``train.idx``/``property`` from (label, encoded image) pairs sorted by label."""
    out_dir = Path(out_dir)
    samples = list(samples)
    labels = np.array([label for label, _ in samples], dtype=np.int64)
    if len(labels) == 0:
        raise ValueError("no images to pack")
    if np.any(np.diff(labels) < 0):
        raise ValueError("samples must be sorted by label")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}")
    n = len(samples)
    with open(out_dir / "train.rec", "wb") as rec, open(out_dir / "train.idx", "wb") as idx:
        writer = RecordWriter(rec, idx)
        writer.write(0, pack_header((n + 1, n + 1 + num_classes), b""))
        for key, (label, payload) in enumerate(samples, start=1):
            writer.write(key, pack_header(float(label), payload, id=key))
        starts = np.searchsorted(labels, np.arange(num_classes + 1)) + 1
        for cls in range(num_classes):
            writer.write(n + 1 + cls, pack_header((starts[cls], starts[cls + 1]), b"", id=n + 1 + cls))
    (out_dir / "property").write_text(f"{num_classes},{image_size},{image_size}\n", encoding="ascii")
    return n


def read_property(root: Path) -> tuple[int, int, int]:
    path = Path(root) / "property"
    try:
        classes, height, width = (int(v) for v in path.read_text(encoding="ascii").strip().split(","))
    except (OSError, ValueError) as exc:
        raise RecordIOError(f"{path}: expected 'num_classes,height,width' ({exc})") from None
    return classes, height, width


class FaceRecordDataset(Dataset):
    """Reads ``train.rec`` like arcface_torch's MXFaceDataset: RGB, random horizontal flip, [-1, 1] CHW."""

    def __init__(self, root: Path | str, random_flip: bool = True, seed: int | None = None,
                 degrade_fraction: float = 0.0) -> None:
        root = Path(root)
        self.reader = RecordReader(root / "train.rec", root / "train.idx")
        if not self.reader.keys:
            self.keys = np.zeros(0, dtype=np.int64)
        elif (header := unpack_header(self.reader.read(0))[0]).flag > 0:
            self.keys = np.arange(1, int(header.label[0]), dtype=np.int64)
        else:  # datasets without the class-range header: every record is an image
            self.keys = np.asarray(self.reader.keys, dtype=np.int64)
        self.random_flip = random_flip
        self.degrade_fraction = degrade_fraction
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """With a ``seed``, flips depend only on (seed, epoch, index): a run resumed mid-epoch sees the
        same augmentation as an uninterrupted one, whatever loader worker reads the sample."""
        self.epoch = epoch

    def flipped(self, i: int) -> bool:
        """Whether sample ``i`` is mirrored this epoch (the same answer every call when seeded)."""
        if self.seed is None:
            return bool(torch.rand(()) < 0.5)
        return bool(np.random.default_rng([self.seed, self.epoch, i]).random() < 0.5)

    def __len__(self) -> int:
        return len(self.keys)

    def label(self, i: int) -> int:
        """The class of sample ``i``, without decoding its image."""
        header, _ = unpack_header(self.reader.read(int(self.keys[i])))
        return int(header.label if isinstance(header.label, numbers.Number) else header.label[0])

    def read(self, i: int) -> tuple[np.ndarray, int]:
        """Decoded HxWx3 RGB uint8 image and its label, without augmentation."""
        key = int(self.keys[i])
        header, payload = unpack_header(self.reader.read(key))
        label = header.label if isinstance(header.label, numbers.Number) else header.label[0]
        bgr = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)
        if bgr is None:
            raise RecordIOError(f"{self.reader.rec_path}: record {key} does not hold a decodable image")
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), int(label)

    def _degraded(self, i: int, rgb: np.ndarray) -> np.ndarray:
        """With probability ``degrade_fraction``, one of the hard eval set's degradations (not rotation: an
        aligned crop stays aligned), seeded like the flip."""
        rng = np.random.default_rng([self.seed, self.epoch, i, 1] if self.seed is not None else None)
        if rng.random() >= self.degrade_fraction:
            return rgb
        return degrade(rng, np.ascontiguousarray(rgb), ARCFACE_TEMPLATE, count=1, kinds=ALIGNED_KINDS)[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        rgb, label = self.read(i)
        if self.degrade_fraction > 0:
            rgb = self._degraded(i, rgb)
        if self.random_flip and self.flipped(i):
            rgb = rgb[:, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).float().div_(127.5).sub_(1.0)
        return tensor, label
