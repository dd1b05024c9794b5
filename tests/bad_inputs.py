"""Builders for the bad-input set every stage must survive (shared by several tests)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from components.sample.hostile import HOSTILE, exif_rotated_jpeg, jpeg_bytes, png_with_claimed_size

__all__ = ["exif_rotated_jpeg", "jpeg_bytes", "png_with_claimed_size", "write_bad_inputs"]


def write_bad_inputs(raw: Path, face_rgb: np.ndarray) -> dict[str, str | None]:
    """Write the bad-input set into ``raw``; returns relative path -> expected reject reason (None = usable)."""
    ident = raw / "bad inputs ü"
    ident.mkdir(parents=True, exist_ok=True)
    expected: dict[str, str | None] = {}

    def put(name: str, data: bytes, reason: str | None) -> None:
        (ident / name).write_bytes(data)
        expected[f"{ident.name}/{name}"] = reason

    good = jpeg_bytes(face_rgb)
    for kind, name in [("empty", "zero.jpg"), ("truncated", "truncated.jpg"), ("garbage", "garbage.jpg"),
                       ("not_image", "notes.txt"), ("bomb", "bomb.png"), ("no_face", "blank wall.jpg")]:
        _, make, reason = HOSTILE[kind]
        put(name, make(face_rgb), reason)

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
