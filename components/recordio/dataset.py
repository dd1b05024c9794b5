"""A PyTorch Dataset over InsightFace's RecordIO face dataset (components/recordio/insightface.py)."""

from __future__ import annotations

import numbers
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from components.align.similarity import ARCFACE_TEMPLATE
from components.augment.degrade import ALIGNED_KINDS, degrade
from components.recordio.format import RecordIOError, RecordReader, unpack_header


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
