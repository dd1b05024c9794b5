"""Turn tightly cropped sample faces into "raw photos" that make detection and alignment do real work.

Each face is scaled, slightly rotated and pasted off-centre onto a larger textured background, and some
photos get a second, smaller bystander face. Everything is drawn from one seeded generator, so the same
seed yields byte-identical JPEGs on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from components.io.atomic import atomic_dir
from components.sample.orl import load_orl_face


@dataclass(frozen=True)
class SampleConfig:
    identities: int = 40
    images_per_identity: int = 10
    canvas: tuple[int, int] = (480, 360)  # width, height
    second_face_fraction: float = 0.2
    seed: int = 0
    jpeg_quality: int = 92


def background(rng: np.random.Generator, width: int, height: int, reduction: int = 1) -> np.ndarray:
    """A smooth colour gradient with soft blobs and sensor-like noise: busy, but face-free. With ``reduction``
    r > 1 it is drawn at 1/r of the size and enlarged (it is smooth anyway), with tiled noise: about a tenth
    of the cost at r = 4, which the scale corpus needs at 10^5 photos (components/sample/corpus.py)."""
    w, h = width // reduction, height // reduction
    top, bottom = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
    t = np.linspace(0.0, 1.0, h)[:, None, None]
    img = np.broadcast_to(top * (1 - t) + bottom * t, (h, w, 3)).astype(np.float32, order="C")
    for _ in range(rng.integers(3, 8)):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(20 // reduction, w // 3)), int(rng.integers(20 // reduction, h // 3)))
        cv2.ellipse(img, centre, axes, float(rng.uniform(0, 180)), 0, 360, rng.uniform(0, 255, 3).tolist(), -1)
    img = cv2.GaussianBlur(img, (0, 0), 9 / reduction)
    if reduction == 1:
        img += rng.normal(0, 4, img.shape).astype(np.float32)
        return np.clip(img, 0, 255)
    img = cv2.resize(img, (width, height), interpolation=cv2.INTER_LINEAR)
    noise = rng.integers(-6, 7, (height // 8, width // 8, 3), dtype=np.int8)
    return img + np.tile(noise, (8, 8, 1)).astype(np.float32)


def _paste(canvas: np.ndarray, face: np.ndarray, rng: np.random.Generator, scale: float,
           centre: tuple[float, float]) -> None:
    """Rotate/scale ``face`` about its centre onto ``canvas`` at ``centre``, feathered by an ellipse."""
    h, w = face.shape
    angle = float(rng.uniform(-12, 12))
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    matrix[:, 2] += np.asarray(centre) - np.array([w / 2, h / 2])
    size = (canvas.shape[1], canvas.shape[0])
    warped = cv2.warpAffine(face.astype(np.float32), matrix, size, flags=cv2.INTER_LINEAR)
    mask = np.zeros((h, w), np.float32)
    cv2.ellipse(mask, (w // 2, h // 2), (int(w * 0.48), int(h * 0.5)), 0, 0, 360, 1.0, -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 4)
    alpha = cv2.warpAffine(mask, matrix, size, flags=cv2.INTER_LINEAR)[:, :, None]
    tint = rng.uniform(0.85, 1.1, 3)  # mild colour cast so the photo is not strictly grey
    canvas[:] = canvas * (1 - alpha) + (warped[:, :, None] * tint) * alpha


def compose_photo(rng: np.random.Generator, face: np.ndarray, bystander: np.ndarray | None,
                  width: int, height: int, scale_range: tuple[float, float] = (1.3, 2.4),
                  backdrop: np.ndarray | None = None) -> np.ndarray:
    """``face`` (and a smaller ``bystander``) pasted on ``backdrop`` (float32 HxWx3), else on a new one."""
    canvas = background(rng, width, height) if backdrop is None else backdrop
    scale = float(rng.uniform(*scale_range))
    fh, fw = face.shape[0] * scale, face.shape[1] * scale
    cx = float(rng.uniform(fw * 0.6, width - fw * 0.6))
    cy = float(rng.uniform(fh * 0.55, height - fh * 0.55))
    if bystander is not None:
        # Smaller and pushed towards a corner away from the subject, as a person in the background would be.
        small = scale * float(rng.uniform(0.45, 0.6))
        bx = width * 0.15 if cx > width / 2 else width * 0.85
        by = float(rng.uniform(height * 0.25, height * 0.75))
        _paste(canvas, bystander, rng, small, (bx, by))
    _paste(canvas, face, rng, scale, (cx, cy))
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray, quality: int, name: str = "sample image") -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"JPEG encoding failed for {name}")
    return buf.tobytes()


def write_sample_raw(out_dir: Path, config: SampleConfig) -> int:
    """Write ``out_dir/<identity>/<n>.jpg`` atomically (the whole folder appears at once); returns the count."""
    rng = np.random.default_rng(config.seed)
    width, height = config.canvas
    count = 0
    with atomic_dir(out_dir) as tmp:
        jobs = [(s, i) for s in range(1, config.identities + 1) for i in range(1, config.images_per_identity + 1)]
        for subject, index in tqdm(jobs, desc="sample", unit="img", disable=None):
            face = load_orl_face(subject, index)
            bystander = None
            if rng.uniform() < config.second_face_fraction:
                other = int(rng.integers(1, config.identities + 1))
                other = other % config.identities + 1 if other == subject else other
                bystander = load_orl_face(other, int(rng.integers(1, 11)))
            photo = compose_photo(rng, face, bystander, width, height)
            target = tmp / f"orl_s{subject:02d}" / f"{index:02d}.jpg"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(encode_jpeg(photo, config.jpeg_quality, str(target)))
            count += 1
    return count
