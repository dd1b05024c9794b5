"""A photo folder at scale, offline: N photos in M identity folders from the bundled real faces ([M]).

For measuring what stages cost at 10^4-10^6 photos, not what a model learns: the identities are synthetic (a
bundled ORL subject under an identity's own mirroring, tint and contrast), so two identities built on the same
subject are the same person to a face model. Each photo varies as a real photo set does: face size and position,
in-plane rotation, lighting, blur, JPEG quality, background, a second face in some photos; and a fixed small
fraction are hostile files of the kinds every stage must survive (components/sample/hostile.py).

Every photo is drawn from its own generator seeded by (seed, photo index), so the corpus is byte-identical
whatever the number of worker processes, and a larger corpus with the same seed and identity count extends a
smaller one photo by photo (the first N photos are the same files).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from components.executor import parallel_map
from components.io.atomic import atomic_dir
from components.sample.hostile import HOSTILE
from components.sample.orl import IDENTITIES, IMAGES_PER_IDENTITY, load_orl_face
from components.sample.raw_photos import background, compose_photo, encode_jpeg


@dataclass(frozen=True)
class CorpusConfig:
    photos: int
    identities: int
    seed: int = 0
    canvas: tuple[int, int] = (480, 360)  # width, height
    second_face_fraction: float = 0.1
    hostile_fraction: float = 0.002  # one file in 500
    out_dir: str = ""  # absolute, for the workers


def identity_folder(identity: int) -> str:
    return f"id{identity:07d}"


def _identity_face(identity: int, image: int, seed: int) -> np.ndarray:
    """Identity ``identity``'s look on ORL image ``image``: its subject, mirrored or not, its contrast."""
    subject = identity % IDENTITIES + 1
    look = np.random.default_rng([seed, 1, identity])
    face = load_orl_face(subject, image)
    if look.uniform() < 0.5:
        face = np.ascontiguousarray(face[:, ::-1])
    gain, lift = look.uniform(0.8, 1.15), look.uniform(-15, 15)
    return np.clip(face.astype(np.float32) * gain + lift, 0, 255).astype(np.uint8)


def render(config: CorpusConfig, index: int) -> tuple[str, bytes, str]:
    """Photo ``index``: (path relative to the corpus root, file bytes, kind: ``photo`` or a hostile kind)."""
    rng = np.random.default_rng([config.seed, 0, index])
    identity, number = index % config.identities, index // config.identities
    face = _identity_face(identity, int(rng.integers(1, IMAGES_PER_IDENTITY + 1)), config.seed)
    bystander = None
    if rng.uniform() < config.second_face_fraction:
        other = (identity + int(rng.integers(1, IDENTITIES))) % config.identities
        bystander = _identity_face(other, int(rng.integers(1, IMAGES_PER_IDENTITY + 1)), config.seed)
    width, height = config.canvas
    photo = compose_photo(rng, face, bystander, width, height, scale_range=(0.9, 2.8),
                          backdrop=background(rng, width, height, reduction=4))
    gamma, gain = rng.uniform(0.6, 1.6), rng.uniform(0.75, 1.2)  # lighting: under- and over-exposed
    photo = cv2.LUT(photo, (255.0 * (np.arange(256) / 255.0) ** gamma * gain).clip(0, 255).astype(np.uint8))
    if rng.uniform() < 0.2:
        photo = cv2.GaussianBlur(photo, (0, 0), float(rng.uniform(0.6, 2.0)))
    stem = f"{identity_folder(identity)}/{number:06d}"
    if rng.uniform() < config.hostile_fraction:
        kind = sorted(HOSTILE)[int(rng.integers(0, len(HOSTILE)))]
        extension, make, _ = HOSTILE[kind]
        return stem + extension, make(photo), kind
    return stem + ".jpg", encode_jpeg(photo, int(rng.integers(35, 96)), stem), "photo"


class _Writer:
    """Renders and writes a batch of photos into ``config.out_dir`` (one per process: executor.parallel_map)."""

    def __init__(self, config: CorpusConfig) -> None:
        self.config = config

    def __call__(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for item in items:
            relative, data, kind = render(self.config, int(item["index"]))
            path = Path(self.config.out_dir) / relative
            path.parent.mkdir(exist_ok=True)
            partial = path.with_name(f".{path.name}.part")  # an interrupted append leaves no half photo
            partial.write_bytes(data)
            os.replace(partial, path)
            out.append({"path": relative, "kind": kind, "bytes": len(data)})
        return out


def _write(folder: Path, config: CorpusConfig, indices: range, workers: int) -> list[dict[str, Any]]:
    job = CorpusConfig(**{**config.__dict__, "out_dir": str(folder.resolve())})
    return parallel_map(_Writer, job, [{"index": i} for i in indices], workers=workers, chunk_size=64,
                        desc="corpus")


def write_corpus(out_dir: Path, config: CorpusConfig, workers: int = 0, start: int = 0) -> dict[str, Any]:
    """Write the corpus into ``out_dir`` atomically (the folder appears whole); returns counts by kind. With
    ``start``, ``out_dir`` holds the corpus's first ``start`` photos already (same seed and identities) and only
    the rest are added to it: new photos arriving in a folder a pipeline has seen."""
    if config.photos < 1 or config.identities < 1:
        raise ValueError(f"a corpus needs photos and identities (got {config.photos} photos, "
                         f"{config.identities} identities)")
    if start:
        written = _write(Path(out_dir), config, range(start, config.photos), workers)
    else:
        with atomic_dir(out_dir) as tmp:
            for identity in range(min(config.identities, config.photos)):
                (tmp / identity_folder(identity)).mkdir()
            written = _write(tmp, config, range(config.photos), workers)
    kinds: dict[str, int] = {}
    for row in written:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    return {"photos": len(written), "identities": min(config.identities, config.photos), "kinds": kinds,
            "bytes": sum(row["bytes"] for row in written)}
