"""Files a real photo folder holds besides good photos: empty, truncated, not an image, a decompression bomb,
a photo without a face, an EXIF-rotated phone photo. The bad-input tests and the scale corpus
(components/sample/corpus.py) write the same kinds, so what the stages survive in tests is what they meet at
scale."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image


def jpeg_bytes(rgb: np.ndarray, **kwargs) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=92, **kwargs)
    return buf.getvalue()


def png_with_claimed_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width x height``: a decompression bomb without the memory."""
    buf = io.BytesIO()
    Image.new("L", (8, 8)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def exif_rotated_jpeg(rgb: np.ndarray) -> bytes:
    """Stored rotated 90 degrees with EXIF orientation 6 ("rotate 90 CW to view"), as phones do."""
    stored = np.ascontiguousarray(np.rot90(rgb, k=1))  # counter-clockwise on disk
    exif = Image.Exif()
    exif[0x0112] = 6
    return jpeg_bytes(stored, exif=exif.tobytes())


# kind -> (file extension, the bytes given a good photo, the reason detect rejects it with)
HOSTILE: dict[str, tuple[str, Callable[[np.ndarray], bytes], str]] = {
    "empty": (".jpg", lambda rgb: b"", "empty"),
    "truncated": (".jpg", lambda rgb: (good := jpeg_bytes(rgb))[: len(good) // 3], "corrupt"),
    "garbage": (".jpg", lambda rgb: b"\xff\xd8\xff\xe0not really a jpeg" * 10, "corrupt"),
    "not_image": (".txt", lambda rgb: b"this is not an image\n", "not_image"),
    "bomb": (".png", lambda rgb: png_with_claimed_size(20000, 20000), "too_large"),
    "no_face": (".jpg", lambda rgb: jpeg_bytes(np.full((300, 400, 3), 128, np.uint8)), "no_face"),
}
