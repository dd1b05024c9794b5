"""IJB-B/IJB-C loose crops -> per-image features: align each crop with its 5 given points and embed it.

Kept apart from ``ijbc.py`` so that scoring precomputed features never imports torch.
"""

from __future__ import annotations

import numpy as np
from torch.utils.data import DataLoader, Dataset

from components.align.similarity import align_face
from components.evaluation.embedders import Embedder, embed_batches
from components.evaluation.ijbc import IjbcOptions
from components.evaluation.ijbc_meta import IjbcMeta
from components.io.images import ImageRejected, read_rgb

MAX_PIXELS = 50_000_000


class _LooseCrops(Dataset):
    """Reads and aligns one loose crop per item; picklable so DataLoader workers can share the work."""

    def __init__(self, meta: IjbcMeta) -> None:
        self.dir = meta.image_dir
        self.images = meta.images
        self.landmarks = meta.landmarks
        self.list_file = meta.meta_path("name_5pts_score.txt")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        path = self.dir / str(self.images[i])
        try:
            rgb = read_rgb(path, MAX_PIXELS)
            return align_face(rgb, self.landmarks[i].astype(np.float64))[0]
        except (ImageRejected, FileNotFoundError, ValueError) as exc:
            # An evaluation image cannot be skipped (the protocol would change), so stop with its name.
            raise ValueError(f"{path} (line {i + 1} of {self.list_file.name}): {exc}") from None


def _collate(batch: list[np.ndarray]) -> np.ndarray:
    return np.stack(batch)


def embed_ijbc_images(meta: IjbcMeta, embedder: Embedder, options: IjbcOptions) -> np.ndarray:
    """Per-image features [n_images, D] in the order of ``<target>_name_5pts_score.txt``."""
    if not meta.image_dir.is_dir():
        raise FileNotFoundError(f"{meta.image_dir}: loose_crop/ folder not found")
    loader = DataLoader(_LooseCrops(meta), batch_size=options.batch_size, num_workers=options.loader_workers,
                        collate_fn=_collate, shuffle=False)
    return embed_batches(embedder, loader, len(meta.images), flip=options.flip)
