from __future__ import annotations

import numpy as np
import pytest

from components.io.images import ImageRejected, decode_rgb
from tests.bad_inputs import exif_rotated_jpeg, jpeg_bytes, png_with_claimed_size


def _face() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (60, 40, 3), dtype=np.uint8)
    img[:10] = 255  # a bright top edge to check orientation
    return img


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"plain text, not an image", "not_image"),
        (jpeg_bytes(_face())[:200], "corrupt"),
        (png_with_claimed_size(20000, 20000), "too_large"),
    ],
)
def test_unusable_bytes_are_rejected_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(ImageRejected) as err:
        decode_rgb(data, max_pixels=50_000_000, name="photo.jpg")
    assert err.value.reason == reason
    assert "photo.jpg" in str(err.value)


def test_exif_rotation_is_applied() -> None:
    img = decode_rgb(exif_rotated_jpeg(_face()), max_pixels=10**8)
    assert img.shape == (60, 40, 3)
    assert img[:8].mean() > 200  # the bright edge is on top again


def test_sixteen_bit_greyscale_keeps_its_range() -> None:
    from io import BytesIO

    from PIL import Image

    ramp = np.tile(np.linspace(0, 65535, 64, dtype=np.uint16), (8, 1))
    buf = BytesIO()
    Image.fromarray(ramp).save(buf, "PNG")
    img = decode_rgb(buf.getvalue(), max_pixels=10**6)
    assert img.shape == (8, 64, 3) and img.dtype == np.uint8
    assert img.min() == 0 and img.max() == 255


def test_transparent_png_is_composited_not_black() -> None:
    from io import BytesIO

    from PIL import Image

    rgba = np.zeros((10, 10, 4), np.uint8)  # fully transparent
    buf = BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    assert decode_rgb(buf.getvalue(), max_pixels=10**6).min() == 255
