"""IJB-C 1:1 at full scale with random features, and backbone embedding throughput on CPU.

Protocol files of IJB-C's real size are generated (469,375 images, 23,124 templates, 15,658,489 pairs of
which 19,557 genuine, 1:N galleries and probes), features are random 512-d float32 saved as ``.npy``; then a
fresh process does what ``faceforge eval ijbc --features`` does: read the protocol, pool, score every pair,
ROC, 1:N. Its phase timings and peak RSS (the whole process, including the 0.9 GB features) are recorded.
Embedding throughput: r50 and mbf in PyTorch on CPU, batch 32, with and without the flip.
Writes ``reports/bench/eval_ijbc.json``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import torch

OUT = Path("reports/bench/eval_ijbc.json")
IMAGES, TEMPLATES, PAIRS, GENUINE, DIM = 469_375, 23_124, 15_658_489, 19_557, 512


def _write_txt(path: Path, columns: dict[str, np.ndarray], delimiter: str = " ", header: bool = False) -> None:
    table = pa.table(columns)
    pacsv.write_csv(table, path, pacsv.WriteOptions(include_header=header, delimiter=delimiter, quoting_style="none"))


def make_protocol(root: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    meta = root / "meta"
    meta.mkdir(parents=True)
    subjects = 3_531  # IJB-C subject count; templates are spread over them
    template_subject = rng.integers(0, subjects, TEMPLATES)
    templates = np.sort(rng.integers(0, TEMPLATES, IMAGES))
    templates[:TEMPLATES] = np.arange(TEMPLATES)  # every template has at least one image
    templates.sort()
    medias = templates * 8 + rng.integers(0, 8, IMAGES)  # up to 8 media per template
    names = np.array([f"{i}.jpg" for i in range(1, IMAGES + 1)])
    _write_txt(meta / "ijbc_face_tid_mid.txt", {"n": names, "t": templates, "m": medias})
    lmk = {f"c{i}": np.round(rng.uniform(30, 90, IMAGES), 3) for i in range(10)}
    _write_txt(meta / "ijbc_name_5pts_score.txt", {"n": names, **lmk, "s": np.round(rng.uniform(0.5, 1, IMAGES), 4)})

    same = np.flatnonzero(np.bincount(template_subject) >= 2)
    by_subject = {s: np.flatnonzero(template_subject == s) for s in same}
    picks = rng.choice(same, GENUINE)
    genuine = np.array([rng.choice(by_subject[s], 2, replace=False) for s in picks])
    impostor = rng.integers(0, TEMPLATES, (int((PAIRS - GENUINE) * 1.01), 2))
    impostor = impostor[template_subject[impostor[:, 0]] != template_subject[impostor[:, 1]]][:PAIRS - GENUINE]
    pairs = np.concatenate([genuine, impostor])
    labels = np.r_[np.ones(len(genuine), np.int64), np.zeros(len(impostor), np.int64)]
    order = np.lexsort((pairs[:, 1], pairs[:, 0]))  # grouped by first template, as the real file is
    _write_txt(meta / "ijbc_template_pair_label.txt",
               {"a": pairs[order, 0], "b": pairs[order, 1], "l": labels[order]})

    # 1:N: one gallery template per subject, subjects split in halves; 19,593 probe templates.
    gallery_t = np.array([np.flatnonzero(template_subject == s)[0] for s in np.unique(template_subject)])
    gallery_s = template_subject[gallery_t]
    half = gallery_s % 2 == 0
    for name, sel in (("G1", half), ("G2", ~half)):
        _write_txt(meta / f"ijbc_1N_gallery_{name}.csv", {"TEMPLATE_ID": gallery_t[sel], "SUBJECT_ID": gallery_s[sel]},
                   delimiter=",", header=True)
    probes = np.setdiff1d(np.arange(TEMPLATES), gallery_t)[:19_593]
    _write_txt(meta / "ijbc_1N_probe_mixed.csv", {"TEMPLATE_ID": probes, "SUBJECT_ID": template_subject[probes]},
               delimiter=",", header=True)
    features = np.lib.format.open_memmap(root / "features.npy", "w+", np.float32, (IMAGES, DIM))
    for start in range(0, IMAGES, 65536):
        features[start:start + 65536] = rng.standard_normal((min(65536, IMAGES - start), DIM), np.float32)
    features.flush()


def _evaluate(root: str, queue: mp.Queue) -> None:
    from components.evaluation.ijbc import check_features, evaluate_ijbc
    from components.evaluation.ijbc_meta import read_ijbc_meta

    start = time.perf_counter()
    meta = read_ijbc_meta(root, need_images=False)
    read_s = time.perf_counter() - start
    start = time.perf_counter()
    features = np.load(Path(root) / "features.npy", mmap_mode="r")
    check_features(features, meta, "features.npy")
    check_s = time.perf_counter() - start
    start = time.perf_counter()
    result = evaluate_ijbc(meta, features)
    total = time.perf_counter() - start
    queue.put({"read_protocol_s": round(read_s, 2), "check_features_s": round(check_s, 2),
               "pool_score_roc_1n_s": round(total, 2), **{k: round(v, 2) for k, v in result.timings.items()},
               "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
               "pairs": len(meta.pair_label), "templates": len(np.unique(meta.templates)), "images": len(meta.images),
               "tar_at_far_1e-4_random": result.verification.tar_at_far[1e-4]})


def embedding_throughput(backbone: str, batch: int = 32, rounds: int = 3) -> dict[str, float]:
    from components.evaluation.embedders import TorchEmbedder
    from components.models import get_model

    torch.manual_seed(0)
    embedder = TorchEmbedder(get_model(backbone), 512)
    faces = np.random.default_rng(0).integers(0, 255, (batch, 112, 112, 3), dtype=np.uint8)
    embedder(faces)  # warm-up
    start = time.perf_counter()
    for _ in range(rounds):
        embedder(faces)
    per_s = rounds * batch / (time.perf_counter() - start)
    return {"forward_images_per_s": round(per_s, 1), "with_flip_images_per_s": round(per_s / 2, 1),
            "batch": batch, "threads": torch.get_num_threads()}


def main() -> None:
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        make_protocol(Path(tmp))
        results["generate_s"] = round(time.perf_counter() - start, 1)
        ctx = mp.get_context("spawn")  # a fresh process: its peak RSS is the evaluation's alone
        queue = ctx.Queue()
        proc = ctx.Process(target=_evaluate, args=(tmp, queue))
        proc.start()
        results["ijbc_full_scale"] = queue.get()
        proc.join()
    results["goal"] = "pool + score + ROC <= 20 s and <= 4 GB peak on 2 cores"
    results["embedding_cpu"] = {name: embedding_throughput(name) for name in ("r50", "mbf")}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
