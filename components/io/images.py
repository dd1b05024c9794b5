"""Decode any photo a user may drop into ``data/raw`` into RGB uint8, or say precisely why not.

Real photo folders hold zero-byte files, truncated JPEGs, CMYK and 16-bit images, transparent PNGs and
EXIF-rotated phone pictures. Each is either normalised here or rejected with a short stable reason code
(the ``reason`` column of ``rejected.csv``), so one bad file never stops a run over a million.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# We enforce our own pixel limit before decoding (``max_pixels``); PIL's global one would raise a
# different exception type at a different size, so it is switched off here in one place.
Image.MAX_IMAGE_PIXELS = None


class ImageRejected(Exception):
    """An input image that cannot be used: ``reason`` is a stable short code, ``problem`` what is wrong with the
    bytes (the same wherever they are stored: a content-keyed cache keeps it), ``detail`` both with the file's
    ``name``."""

    def __init__(self, reason: str, name: str, problem: str) -> None:
        self.reason, self.name, self.problem = reason, name, problem
        self.detail = f"{name}: {problem}"
        super().__init__(f"{reason}: {self.detail}")

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # raised in a pool worker, it must unpickle whole
        return ImageRejected, (self.reason, self.name, self.problem)


def _to_rgb(im: Image.Image) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale PNG/TIFF: keep the full range by scaling instead of PIL's clipping convert("L").
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        grey = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    return np.asarray(im.convert("RGB"))


def decode_rgb(data: bytes, max_pixels: int, name: str = "<bytes>") -> np.ndarray:
    """Decode image bytes to an HxWx3 uint8 RGB array, upright according to EXIF."""
    if not data:
        raise ImageRejected("empty", name, "zero-byte file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
            width, height = im.size
            if width * height > max_pixels:
                raise ImageRejected("too_large", name, f"{width}x{height} exceeds {max_pixels} pixels")
            im.load()
            im = ImageOps.exif_transpose(im)
            return np.ascontiguousarray(_to_rgb(im))
    except ImageRejected:
        raise
    except UnidentifiedImageError:
        raise ImageRejected("not_image", name, "not a recognised image format") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise ImageRejected("corrupt", name, str(exc)) from None


def read_rgb(path: Path, max_pixels: int, name: str | None = None) -> np.ndarray:
    """``decode_rgb`` of a file; rejections name it ``name`` (default: ``path``). Stages pass the path relative to
    their input folder, so that a rejection row is the same wherever the project is checked out (and whichever
    node read the file)."""
    return decode_rgb(Path(path).read_bytes(), max_pixels, name or str(path))
