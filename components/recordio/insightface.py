"""InsightFace's face-dataset layout on RecordIO, as in MS1MV3 / Glint360K (the PyTorch Dataset that reads it
for training is components/recordio/dataset.py: packing needs no torch, and saves its 3 s import).

Keys ``1..N`` are images (``IRHeader.label`` = class id, scalar or first element of an array), sorted by
class. Key ``0`` is a header record with ``flag=2, label=(N+1, N+1+C)``: the key range of one record
per class, each holding ``label=(first image key, end image key)``. ``property`` says ``C,H,W``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from components.recordio.format import RecordIOError, RecordWriter, pack_header


def write_face_dataset(out_dir: Path, samples: Iterable[tuple[int, bytes]], num_classes: int,
                       image_size: int = 112) -> int:
    """Write ``train.rec``/``train.idx``/``property`` from (label, encoded image) pairs sorted by label.

    ``samples`` is consumed one at a time (only the labels are kept), so packing 10^6 faces holds one image in
    memory, not all; on an error the files are half-written, which is why callers write into a temporary folder.
    """
    out_dir = Path(out_dir)
    labels: list[int] = []
    with open(out_dir / "train.rec", "wb") as rec, open(out_dir / "train.idx", "wb") as idx:
        writer = RecordWriter(rec, idx)
        placeholder = pack_header((0, 0), b"")  # key 0 comes first; its counts are known only at the end
        header_at = writer.write(0, placeholder)
        for key, (label, payload) in enumerate(samples, start=1):
            if labels and label < labels[-1]:
                raise ValueError("samples must be sorted by label")
            if not 0 <= label < num_classes:
                raise ValueError(f"labels must lie in [0, {num_classes}), got {label}")
            labels.append(label)
            writer.write(key, pack_header(float(label), payload, id=key))
        if not labels:
            raise ValueError("no images to pack")
        n = len(labels)
        writer.overwrite(header_at, placeholder, pack_header((n + 1, n + 1 + num_classes), b""))
        starts = np.searchsorted(np.asarray(labels), np.arange(num_classes + 1)) + 1
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
