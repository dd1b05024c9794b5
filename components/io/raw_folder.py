"""List the photos of a ``<identity>/<image>`` folder, refusing what must not be read."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from components.io.rejects import Rejection


@dataclass(frozen=True)
class RawImage:
    path: str  # relative to the raw root, POSIX separators: stable across machines
    identity: str
    size: int
    mtime_ns: int


def list_raw_images(root: Path, stage: str) -> tuple[list[RawImage], list[Rejection]]:
    """Walk ``root/<identity>/*``; hidden files are ignored, everything else is listed or rejected.

    A symlink whose target leaves ``root`` is rejected (``outside_root``): a photo folder shared by a
    team must not become a way to read arbitrary files on the training machine.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: raw photo folder not found (params data.raw_dir)")
    real_root = root.resolve()
    images: list[RawImage] = []
    rejected: list[Rejection] = []
    for entry in sorted(root.rglob("*")):
        rel = entry.relative_to(root).as_posix()
        if any(part.startswith(".") for part in entry.relative_to(root).parts):
            continue
        if entry.is_dir() and not entry.is_symlink():
            continue
        if entry.is_symlink():
            target = entry.resolve()
            if not target.is_relative_to(real_root):
                rejected.append(Rejection(rel, stage, "outside_root", f"symlink to {target}"))
                continue
            if target.is_dir():
                continue
        parts = entry.relative_to(root).parts
        if len(parts) != 2:
            rejected.append(Rejection(rel, stage, "no_identity", "expected <identity>/<image>"))
            continue
        if not entry.exists():
            rejected.append(Rejection(rel, stage, "unreadable", "dangling link"))
            continue
        st = entry.stat()
        images.append(RawImage(rel, parts[0], st.st_size, st.st_mtime_ns))
    return images, rejected
