"""A 2-D ``.npy`` file read in blocks of rows into one reused buffer.

A memory map of a 0.9 GB features file is cheap to open but every page it touches stays in the process's
resident memory until it is unmapped; reading blocks with ``readinto`` keeps the process at one block.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

BLOCK_ROWS = 32768  # 64 MB of 512-d float32


class NpyRows:
    """Header checked on open: a 2-D, C-ordered array of a float dtype."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: features file not found")
        try:
            with self.path.open("rb") as fh:
                version = np.lib.format.read_magic(fh)
                read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                               (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                if read_header is None:
                    raise ValueError(f"unsupported .npy format version {version}")
                shape, fortran, dtype = read_header(fh)
                self._offset = fh.tell()
        except ValueError as exc:
            raise ValueError(f"{self.path}: not a .npy file ({exc})") from None
        if len(shape) != 2:
            raise ValueError(f"{self.path}: expected a 2-D [images, dim] array, got shape {shape}")
        if fortran or dtype.kind != "f" or dtype.hasobject:
            raise ValueError(f"{self.path}: expected a C-ordered float array, got {dtype} "
                             f"{'Fortran' if fortran else 'C'} order")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.dtype = dtype
        size = self.path.stat().st_size
        if size < self._offset + self.shape[0] * self.shape[1] * dtype.itemsize:
            raise ValueError(f"{self.path}: truncated ({size} bytes for an array of shape {self.shape})")

    def __len__(self) -> int:
        return self.shape[0]

    def blocks(self, rows: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, block) in file order; the block's buffer is reused by the next one."""
        buffer = np.empty((min(rows, max(1, self.shape[0])), self.shape[1]), self.dtype)
        with self.path.open("rb") as fh:
            fh.seek(self._offset)
            for start in range(0, self.shape[0], rows):
                block = buffer[:min(rows, self.shape[0] - start)]
                if fh.readinto(memoryview(block).cast("B")) != block.nbytes:
                    raise ValueError(f"{self.path}: truncated at row {start}")
                yield start, block
