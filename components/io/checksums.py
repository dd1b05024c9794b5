"""SHA-256 of files and streams: how outputs, served models and stored objects are proved to be the same bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO


def sha256_stream(fh: BinaryIO, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of everything readable from ``fh``, in bounded memory (files, S3 bodies)."""
    digest = hashlib.sha256()
    while block := fh.read(chunk):
        digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    with open(path, "rb") as fh:
        return sha256_stream(fh, chunk)
