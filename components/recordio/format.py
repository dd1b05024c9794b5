"""MXNet RecordIO (``.rec`` + ``.idx``) and InsightFace's image header, without mxnet.

Written by hand because mxnet is retired (no wheels for current Python), yet MS1MV3, Glint360K and
every arcface_torch user store faces this way. Layout, from dmlc-core's recordio and mxnet.recordio:

* a record is ``uint32 magic 0xCED7230A``, ``uint32 lrec`` (upper 3 bits: continuation flag, lower 29:
  payload length), the payload, zero padding to a 4-byte boundary;
* a payload that contains the magic word at a 4-byte-aligned offset is split there into parts with
  flags 1 (first), 2 (middle), 3 (last); the reader re-inserts the magic word between parts;
* ``.idx`` is text, ``<key>\\t<byte offset of the record>`` per line;
* an image payload starts with ``IRHeader`` = ``<IfQQ``: flag, label, id, id2; when ``flag > 0`` the
  label is instead ``flag`` float32 values following the header, then the encoded image bytes.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_HEADER = struct.Struct("<IfQQ")
_LENGTH_MASK = (1 << 29) - 1


class RecordIOError(ValueError):
    """A malformed .rec/.idx file; the message names the file and the byte offset."""


@dataclass(frozen=True)
class IRHeader:
    flag: int
    label: float | tuple[float, ...]
    id: int
    id2: int


def pack_header(label: float | tuple[float, ...] | list[float], payload: bytes, id: int = 0, id2: int = 0) -> bytes:
    if isinstance(label, (int, float)):
        return _HEADER.pack(0, float(label), id, id2) + payload
    values = np.asarray(label, dtype=np.float32)
    return _HEADER.pack(len(values), 0.0, id, id2) + values.tobytes() + payload


def unpack_header(record: bytes | memoryview) -> tuple[IRHeader, memoryview]:
    view = memoryview(record)
    if len(view) < _HEADER.size:
        raise RecordIOError(f"record of {len(view)} bytes is shorter than the 24-byte IRHeader")
    flag, label, id_, id2 = _HEADER.unpack_from(view)
    body = view[_HEADER.size:]
    if flag > 0:
        values = np.frombuffer(body[: 4 * flag], dtype=np.float32)
        return IRHeader(flag, tuple(float(v) for v in values), id_, id2), body[4 * flag:]
    return IRHeader(flag, float(label), id_, id2), body


def _encode_parts(payload: bytes) -> bytes:
    """Frame one payload, splitting it at aligned magic words exactly as dmlc-core's writer does."""
    out = bytearray()
    start = 0
    aligned_end = len(payload) - len(payload) % 4
    pos = payload.find(_MAGIC_BYTES, 0, aligned_end)
    while pos != -1:
        if pos % 4 == 0:
            flag = 1 if start == 0 else 2
            out += _MAGIC_BYTES + struct.pack("<I", (flag << 29) | (pos - start)) + payload[start:pos]
            start = pos + 4
        pos = payload.find(_MAGIC_BYTES, pos + 1, aligned_end)
    flag = 3 if start else 0
    tail = payload[start:]
    out += _MAGIC_BYTES + struct.pack("<I", (flag << 29) | len(tail)) + tail
    out += b"\0" * (-len(tail) % 4)
    return bytes(out)


class RecordWriter:
    """Append-only ``.rec`` + ``.idx`` writer (keys are written in the order given)."""

    def __init__(self, rec: BinaryIO, idx: BinaryIO) -> None:
        self.rec, self.idx = rec, idx

    def write(self, key: int, payload: bytes) -> int:
        """Append one record; returns its offset in ``.rec``."""
        offset = self.rec.tell()
        self.idx.write(f"{key}\t{offset}\n".encode())
        self.rec.write(_encode_parts(payload))
        return offset

    def overwrite(self, offset: int, old: bytes, new: bytes) -> None:
        """Replace the record written at ``offset`` with ``old`` by ``new`` of the same framed size (a header
        whose counts are known only once every record is written), then carry on appending."""
        framed = _encode_parts(new)
        if len(framed) != len(_encode_parts(old)):
            raise ValueError("a record can only be overwritten by one of the same framed size")
        end = self.rec.tell()
        self.rec.seek(offset)
        self.rec.write(framed)
        self.rec.seek(end)


def read_index(idx_path: Path) -> dict[int, int]:
    index: dict[int, int] = {}
    for lineno, line in enumerate(Path(idx_path).read_text(encoding="ascii").splitlines(), 1):
        if not line.strip():
            continue
        try:
            key, offset = line.split("\t")
            index[int(key)] = int(offset)
        except ValueError:
            raise RecordIOError(f"{idx_path}:{lineno}: expected '<key>\\t<offset>', got {line!r}") from None
    return index


class RecordReader:
    """Random access to records by key via the ``.idx`` offsets, over a read-only mmap.

    The mmap is opened lazily so the object can be pickled into DataLoader workers before first use:
    each worker then maps the file itself and shares the page cache instead of copying data.
    """

    def __init__(self, rec_path: Path, idx_path: Path) -> None:
        self.rec_path = Path(rec_path)
        self.index = read_index(idx_path)
        self.keys = sorted(self.index)
        self._map: mmap.mmap | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None}

    @property
    def _data(self) -> mmap.mmap:
        if self._map is None:
            with open(self.rec_path, "rb") as fh:
                self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        return self._map

    def read(self, key: int) -> bytes:
        if key not in self.index:
            raise KeyError(f"{self.rec_path}: no record with key {key}")
        return self.read_at(self.index[key])

    def read_at(self, offset: int) -> bytes:
        return read_record(self._data, offset, str(self.rec_path))[0]


def read_record(data: bytes | mmap.mmap, offset: int, name: str) -> tuple[bytes, int]:
    """The record at ``offset`` of a ``.rec`` file's bytes (its parts joined) and the next record's offset."""
    parts: list[bytes] = []
    while True:
        if offset + 8 > len(data):
            raise RecordIOError(f"{name}: truncated record header at byte {offset}")
        magic, lrec = struct.unpack_from("<II", data, offset)
        if magic != MAGIC:
            raise RecordIOError(f"{name}: bad magic 0x{magic:08X} at byte {offset}")
        flag, length = lrec >> 29, lrec & _LENGTH_MASK
        start = offset + 8
        if start + length > len(data):
            raise RecordIOError(f"{name}: record at byte {offset} runs past end of file")
        parts.append(data[start:start + length])
        offset = start + length + (-length % 4)
        if flag in (0, 3):
            return _MAGIC_BYTES.join(parts), offset
        if flag not in (1, 2):
            raise RecordIOError(f"{name}: invalid continuation flag {flag} at byte {offset}")


def scan_records(data: bytes | mmap.mmap, name: str) -> Iterator[bytes]:
    """Every record of a ``.rec`` file's bytes in order, without its ``.idx`` (a stored object on its own)."""
    offset = 0
    while offset < len(data):
        record, offset = read_record(data, offset, name)
        yield record
