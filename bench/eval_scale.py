"""[M] Evaluation by model at scale: ``faceforge eval ijbc --model`` on IJB-format sets of 10k and 100k images.

For each size (``python -m bench.eval_scale 10000 100000``, the default):
- an IJB-C-format set of that many loose crops (components/sample/eval_sets.py) from all 40 ORL subjects,
  generated once and reused; each template is paired with at most 20 others (``max_pairs_per_template``),
  as IJB-C lists 6% of its possible pairs. 40 people only: the set measures cost, not accuracy;
- the model: faceforge's MobileFaceNet (``mbf``, 512-d) exported to ONNX as the export stage does, random
  weights (cost only; the demo's fine-tuned SFace embeds at 40 faces/s here, which would take an hour at 100k);
- ``faceforge eval ijbc --model <that .onnx>`` as a user runs it (process start, imports, reading
  and aligning every crop in its loader process, embedding with the flip, scoring, writing): wall seconds,
  images per second, peak RSS of its processes;
- the bare model in the same run: ONNX Runtime on the same crops already decoded and aligned, batch 64,
  face and mirror image as the command embeds them (its rate on the first 10,000): the limit the command is
  compared with (goal >= 0.9x).
Writes ``reports/bench/eval_scale.json``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.stage_command import FACEFORGE, measure_command, measure_sizes
from components.align.similarity import align_face
from components.evaluation.embedders import OnnxEmbedder, embed_batches
from components.evaluation.ijbc_meta import read_ijbc_meta
from components.executor import default_workers
from components.io.atomic import atomic_dir
from components.io.images import read_rgb
from components.sample.eval_sets import EvalSetConfig, detect_sources, write_ijbc_mini
from components.sample.orl import IDENTITIES

WORK = Path("reports/bench/eval_scale")
OUT = Path("reports/bench/eval_scale.json")
MODEL = WORK / "mbf.onnx"
IMAGES_PER_TEMPLATE = 3  # the generator's mean: 1-3 media of 1-2 frames
BARE_IMAGES = 10_000
BATCH = 64


def _eval_set(images: int) -> tuple[Path, dict[str, int], bool]:
    """The set's folder, its counts, and whether an earlier run had generated it."""
    root = WORK / f"ijbc_{images}"
    done = root / "counts.json"
    reused = done.is_file()
    if not reused:
        subjects = tuple(range(1, IDENTITIES + 1))
        templates = max(1, images // (IDENTITIES * IMAGES_PER_TEMPLATE))
        config = EvalSetConfig(subjects=subjects, templates_per_subject=templates, max_pairs_per_template=20)
        with atomic_dir(root) as tmp:
            counts = write_ijbc_mini(tmp / "set", detect_sources(subjects), config)
            (tmp / "counts.json").write_text(json.dumps(counts))
    return root / "set", json.loads(done.read_text()), reused


def _bare(root: Path) -> dict[str, float]:
    meta = read_ijbc_meta(root, "ijbc")
    n = min(BARE_IMAGES, len(meta.images))
    faces = np.stack([align_face(read_rgb(meta.image_dir / str(meta.images[i]), 50_000_000),
                                 meta.landmarks[i].astype(np.float64))[0] for i in range(n)])
    embedder = OnnxEmbedder(MODEL)
    start = time.perf_counter()
    embed_batches(embedder, (faces[i:i + BATCH] for i in range(0, n, BATCH)), n, flip=True)
    seconds = time.perf_counter() - start
    return {"images": n, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1)}


def _model() -> None:
    if not MODEL.is_file():
        import torch

        from components.export.onnx_export import export_onnx
        from components.models import get_model

        torch.manual_seed(0)
        MODEL.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(get_model("mbf", 512).eval(), MODEL)


def measure(images: int) -> dict[str, Any]:
    start = time.perf_counter()
    root, counts, reused = _eval_set(images)
    row: dict[str, Any] = {**counts, **({"set_reused": True} if reused else
                                        {"generate_s": round(time.perf_counter() - start, 1)})}
    out = WORK / f"out_{images}"
    command = measure_command([FACEFORGE, "eval", "ijbc", "--root", str(root), "--out", str(out), "--model",
                               str(MODEL)], itself=True)
    command["images_per_s"] = round(counts["images"] / command["seconds"], 1)
    row["faceforge_eval_ijbc"] = command
    metrics = json.loads((out / "ijbc.json").read_text())
    row["phases_s"] = metrics.get("timings")
    row["embed_images_per_s"] = metrics.get("embed_images_per_s")
    row["bare_onnxruntime"] = _bare(root)
    row["vs_bare"] = round(command["images_per_s"] / row["bare_onnxruntime"]["images_per_s"], 3)
    return row


def main() -> None:
    _model()
    measure_sizes(measure, [int(a) for a in sys.argv[1:]] or [10_000, 100_000], OUT, "images",
                  {"machine": f"{default_workers()} CPU cores", "model": str(MODEL)})


if __name__ == "__main__":
    main()
