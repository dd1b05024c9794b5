"""What real probes suffer and clean sample photos do not: low resolution, blur, strong JPEG, occlusion,
uneven lighting, in-plane rotation.

One seeded function serves two purposes: the hard held-out evaluation set (components/sample/eval_sets.py), on
which a good pretrained model is no longer saturated, and training augmentation (the same degradations applied
to aligned training faces), so that a fine-tuned model learns what that set measures. Landmarks travel with
the image (only the rotation moves them), so a degraded photo is aligned exactly like a clean one.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Degradation = Callable[[np.random.Generator, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _interocular(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[1] - landmarks[0]))


def low_resolution(rng: np.random.Generator, rgb: np.ndarray, lmk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shrunk until the eyes are 12-22 px apart (a face far from the camera), then scaled back up."""
    factor = min(1.0, rng.uniform(12.0, 22.0) / max(_interocular(lmk), 1.0))
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR), lmk


def blur(rng: np.random.Generator, rgb: np.ndarray, lmk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Out of focus (Gaussian) or moving (a line kernel at a random angle), scaled to the face's size."""
    size = _interocular(lmk)
    if rng.uniform() < 0.5:
        return cv2.GaussianBlur(rgb, (0, 0), float(rng.uniform(0.05, 0.11) * size)), lmk
    length = max(3, int(rng.uniform(0.2, 0.4) * size)) | 1
    kernel = np.zeros((length, length), np.float32)
    kernel[length // 2, :] = 1.0
    rotation = cv2.getRotationMatrix2D((length / 2 - 0.5, length / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (length, length))
    return cv2.filter2D(rgb, -1, kernel / max(kernel.sum(), 1e-6)), lmk


def jpeg(rng: np.random.Generator, rgb: np.ndarray, lmk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Strong compression: quality 8-25, the blocks and ringing of a thumbnail or a chat app."""
    ok, buf = cv2.imencode(".jpg", rgb, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(8, 26))])
    if not ok:
        raise RuntimeError("JPEG encoding failed while degrading a face")
    return cv2.imdecode(buf, cv2.IMREAD_UNCHANGED).reshape(rgb.shape), lmk


def occlusion(rng: np.random.Generator, rgb: np.ndarray, lmk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sunglasses (a dark band along the eye line), a mask (mouth and nose) or an object over one landmark;
    drawn in the face's own frame, so that a tilted face is covered like an upright one."""
    out = rgb.copy()
    size = _interocular(lmk)
    grey = int(rng.integers(0, 90))
    colour = (grey,) * (rgb.shape[2] if rgb.ndim == 3 else 1)
    across = (lmk[1] - lmk[0]) / max(size, 1.0)  # unit vector from the left eye to the right one
    down = np.array([-across[1], across[0]])  # perpendicular, towards the mouth
    kind = rng.integers(3)
    if kind == 0:
        centre, half_w, half_h = (lmk[0] + lmk[1]) / 2, 0.95 * size, 0.3 * size
    elif kind == 1:
        mouth = (lmk[3] + lmk[4]) / 2
        top, bottom = lmk[2] - 0.15 * size * down, mouth + 0.55 * size * down
        centre, half_w, half_h = (top + bottom) / 2, 0.85 * size, float(np.linalg.norm(bottom - top)) / 2
    else:
        centre, half_w = lmk[rng.integers(5)], rng.uniform(0.3, 0.55) * size
        half_h = half_w
    corners = [centre + sx * half_w * across + sy * half_h * down for sx, sy in ((-1, -1), (1, -1), (1, 1), (-1, 1))]
    cv2.fillConvexPoly(out, np.round(np.array(corners)).astype(np.int32), colour)
    return out, lmk


def lighting(rng: np.random.Generator, rgb: np.ndarray, lmk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Light from one side (a linear ramp 0.25-0.6 -> 1.0-1.4 across the image) and an exposure curve."""
    h, w = rgb.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (np.cos(angle) * (xx / w - 0.5) + np.sin(angle) * (yy / h - 0.5)) + 0.5
    ramp = rng.uniform(0.25, 0.6) + t * (rng.uniform(1.0, 1.4) - rng.uniform(0.25, 0.6))
    gamma = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    shaded = 255.0 * (rgb.astype(np.float32) / 255.0) ** gamma
    shaded *= ramp[..., None] if rgb.ndim == 3 else ramp
    return np.clip(shaded, 0, 255).astype(np.uint8), lmk


def rotation(rng: np.random.Generator, rgb: np.ndarray, lmk: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """In-plane rotation of 20-40 degrees either way about the face's centre (a tilted head or camera)."""
    h, w = rgb.shape[:2]
    angle = float(rng.uniform(20, 40) * rng.choice([-1, 1]))
    centre = lmk.mean(0)
    matrix = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), angle, 1.0)
    out = cv2.warpAffine(rgb, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out, lmk @ matrix[:, :2].T + matrix[:, 2]


# in the order they are applied: the scene (pose, occluder, light), then the camera, then compression
DEGRADATIONS: dict[str, Degradation] = {"rotation": rotation, "occlusion": occlusion, "lighting": lighting,
                                        "low_resolution": low_resolution, "blur": blur, "jpeg": jpeg}
# On an aligned training crop a rotation is not what the model sees at test time (alignment undoes it there):
# training augments with the others.
ALIGNED_KINDS = tuple(k for k in DEGRADATIONS if k != "rotation")


def degrade(rng: np.random.Generator, rgb: np.ndarray, landmarks: np.ndarray, count: int = 2,
            kinds: tuple[str, ...] = tuple(DEGRADATIONS)) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``count`` different degradations drawn from ``kinds``, applied in ``DEGRADATIONS`` order:
    (image, landmarks, their names)."""
    picked = {kinds[k] for k in rng.choice(len(kinds), size=min(count, len(kinds)), replace=False)}
    names = [name for name in DEGRADATIONS if name in picked]
    for name in names:
        rgb, landmarks = DEGRADATIONS[name](rng, rgb, landmarks)
    return rgb, landmarks, names
