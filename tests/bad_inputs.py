"""Builders for the bad-input set every stage must survive (shared by several tests)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

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


def write_bad_inputs(raw: Path, face_rgb: np.ndarray) -> dict[str, str | None]:
    """Write the bad-input set into ``raw``; returns relative path -> expected reject reason (None = usable)."""
    ident = raw / "bad inputs ü"
    ident.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}

    def put(name: str, data: bytes, reason: str | None) -> None:
        (ident / name).write_bytes(data)
        expected[f"{ident.name}/{name}"] = reason

    good = jpeg_bytes(face_rgb)
    put("zero.jpg", b"", "empty")
    put("truncated.jpg", good[: len(good) // 3], "corrupt")
    put("garbage.jpg", b"\xff\xd8\xff\xe0not really a jpeg" * 10, "corrupt")
    put("notes.txt", b"this is not an image\n", "not_image")
    put("bomb.png", png_with_claimed_size(20000, 20000), "too_large")
    put("blank wall.jpg", jpeg_bytes(np.full((300, 400, 3), 128, np.uint8)), "no_face")

    buf = io.BytesIO()
    Image.fromarray(face_rgb).convert("RGBA").save(buf, "PNG")
    put("alpha ü.png", buf.getvalue(), None)
    buf = io.BytesIO()
    Image.fromarray(face_rgb).convert("L").save(buf, "JPEG")
    put("grey.jpg", buf.getvalue(), None)
    buf = io.BytesIO()
    Image.fromarray(face_rgb).convert("CMYK").save(buf, "JPEG")
    put("cmyk.jpg", buf.getvalue(), None)
    grey16 = (face_rgb.mean(axis=2) * 257).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, "PNG")
    put("sixteen.png", buf.getvalue(), None)
    put("rotated.jpg", exif_rotated_jpeg(face_rgb), None)

    outside = raw.parent / "secret.jpg"
    outside.write_bytes(good)
    (ident / "escape.jpg").symlink_to(outside)
    expected[f"{ident.name}/escape.jpg"] = "outside_root"

    lonely = raw / "only one"
    lonely.mkdir()
    (lonely / "single.jpg").write_bytes(good)
    expected["only one/single.jpg"] = "few_images"
    return expected
