"""Re-embedding a gallery for a new model version: faces per second through the product's migration against bare
ONNX Runtime on the same crops, at 10^5 enrolled faces (goal, issue [O]: >= 0.9x).

The gallery: ``FACEFORGE_BENCH_REEMBED_FACES`` (100,000) faces, each a distinct aligned crop (the AT&T faces at
112x112, each with its own brightness and a one-pixel shift) stored as the enrolment stores them (PNG in the
crop store, a row in a SQLite gallery). The model: an mbf with 512-d output exported to ONNX (random weights:
the speed does not depend on them).
- migration: what a promotion runs (flows/gallery.prepare -> Gallery.migrate): read the faces without a
  template in batches, load and check each crop (PNG decode, SHA-256), embed, commit the templates;
- bare ONNX Runtime: the same crops already decoded in memory, the same session options and batch size, only
  ``session.run`` and the normalisation.
Both on this machine's cores, one after the other. Writes ``reports/bench/gallery_reembed.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

OUT = Path("reports/bench/gallery_reembed.json")
FACES = int(os.environ.get("FACEFORGE_BENCH_REEMBED_FACES", "100000"))
BARE_FACES = int(os.environ.get("FACEFORGE_BENCH_REEMBED_BARE_FACES", "20000"))  # a sample: the rate is flat


def _crops(count: int, seed: int = 0) -> Any:
    """``count`` distinct 112x112 RGB crops from the bundled AT&T faces (yielded, never all in memory)."""
    from components.sample.orl import load_orl_face

    faces = [cv2.resize(load_orl_face(s, i), (112, 112)) for s in range(1, 41) for i in range(1, 11)]
    rng = np.random.default_rng(seed)
    for n in range(count):
        grey = np.roll(faces[n % len(faces)], int(rng.integers(-1, 2)), axis=1).astype(np.float32)
        grey = np.clip(grey * rng.uniform(0.8, 1.2) + rng.uniform(-10, 10), 0, 255).astype(np.uint8)
        yield np.repeat(grey[:, :, None], 3, axis=2)


def _enrolled(folder: Path) -> Any:
    """A gallery holding ``FACES`` faces and their crops, as enrolment leaves them."""
    from sqlalchemy import insert

    from components.gallery.database import faces
    from components.gallery.gallery import Gallery

    gallery = Gallery(f"sqlite:///{folder / 'gallery.db'}", str(folder / "crops"))
    now, rows = datetime.now(UTC), []
    for n, crop in enumerate(_crops(FACES)):
        sha = gallery.crops.put(crop)
        rows.append({"identity": f"person{n // 5:06d}", "photo_sha256": hashlib.sha256(str(n).encode()).hexdigest(),
                     "crop_sha256": sha, "enrolled_at": now})
        if len(rows) == 10_000:
            with gallery.engine.begin() as connection:
                connection.execute(insert(faces), rows)
            rows = []
    if rows:
        with gallery.engine.begin() as connection:
            connection.execute(insert(faces), rows)
    return gallery


def main() -> None:
    import torch

    from components.export import export_onnx
    from components.gallery.gallery import ModelId
    from components.gallery.reembed import CropEmbedder
    from components.io.checksums import sha256_file
    from components.models import get_model
    from flows.gallery import prepare
    from pipelines.params import load_params

    batch = load_params(Path("params.yaml")).gallery.reembed_batch
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        export_onnx(get_model("mbf", 512).eval(), work / "model.onnx")
        start = time.perf_counter()
        gallery = _enrolled(work)
        enrol_s = time.perf_counter() - start

        model = ModelId(sha256_file(work / "model.onnx"), "2")
        start = time.perf_counter()
        done = prepare(gallery, model, lambda: work / "model.onnx", batch)
        migrate_s = time.perf_counter() - start
        assert done["re_embedded"] == FACES, done

        embed = CropEmbedder(work / "model.onnx")
        crops = np.stack(list(_crops(BARE_FACES)))
        start = time.perf_counter()
        for first in range(0, len(crops), batch):
            embed(crops[first:first + batch])
        bare_s = time.perf_counter() - start
    migrate_rate, bare_rate = FACES / migrate_s, BARE_FACES / bare_s
    results = {
        "cores": os.cpu_count(), "faces": FACES, "bare_faces": BARE_FACES, "batch": batch,
        "model": "mbf, 512-d, ONNX Runtime CPU", "enrol_fixture_s": round(enrol_s, 1),
        "migration": {"seconds": round(migrate_s, 1), "faces_per_s": round(migrate_rate, 1)},
        "bare_onnxruntime": {"seconds": round(bare_s, 1), "faces_per_s": round(bare_rate, 1)},
        "ratio": round(migrate_rate / bare_rate, 3), "goal": "migration >= 0.9x bare ONNX Runtime"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
