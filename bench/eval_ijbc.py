"""IJB-C 1:1 and 1:N at full scale, the whole CLI process side by side with InsightFace's, and embedding speed.

Protocol files of IJB-C's real size are generated (469,375 images, 23,124 templates, 15,658,489 pairs of
which 19,557 genuine, 1:N galleries and probes) with 512-d float32 features that carry a signal (a vector per
subject plus noise). Then ``faceforge eval ijbc --features`` runs as a user runs it, in fresh processes
(imports, parsing, scoring, writing): wall time and peak RSS of each whole process, its phase timings and
TAR@FAR. With ``$ARCFACE_TORCH`` set, InsightFace's own ``eval_ijbc.py`` runs on the same files
(``bench/insightface_ijbc.py``) and both TAR tables are recorded side by side.
Embedding throughput: r50 and mbf in PyTorch on CPU, batch 32, with and without the flip.
Writes ``reports/bench/eval_ijbc.json``.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from bench import arcface_torch

OUT = Path("reports/bench/eval_ijbc.json")
IMAGES, TEMPLATES, PAIRS, GENUINE, DIM = 469_375, 23_124, 15_658_489, 19_557, 512
FACEFORGE_RUNS = 3  # the median is reported


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
    # features with a signal (a vector per subject plus image noise), so TAR@FAR compares something real
    subject_vectors = rng.standard_normal((subjects, DIM), np.float32)
    features = np.lib.format.open_memmap(root / "features.npy", "w+", np.float32, (IMAGES, DIM))
    for start in range(0, IMAGES, 65536):
        own = subject_vectors[template_subject[templates[start:start + 65536]]]
        features[start:start + 65536] = 0.35 * own + rng.standard_normal(own.shape, np.float32)
    features.flush()


def _run(command: list[str], cwd: Path) -> dict[str, float]:
    """Wall seconds and peak RSS (GB) of one whole process, as a user runs it."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {proc.stderr.read().decode()[-2000:]}")
    return {"wall_s": round(wall, 2), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2)}


def _tar_table(metrics: dict) -> dict[str, float]:
    """TAR in %, two decimals, as InsightFace's table prints it."""
    return {k: round(100 * v, 2) for k, v in metrics.items() if k.startswith("tar_at_far") and v is not None}


def _insightface_table(stdout_log: Path) -> dict[str, float]:
    row = next(line for line in stdout_log.read_text().splitlines() if line.startswith("| ijbc"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    return {f"tar_at_far_1e-{6 - i}": float(c) for i, c in enumerate(cells)}


def whole_cli(root: Path, runs: int = FACEFORGE_RUNS) -> dict[str, object]:
    """``faceforge eval ijbc --features`` (fresh processes) and InsightFace's ``eval_ijbc.py`` on the same files."""
    repo = Path(__file__).resolve().parents[1]
    features = root / "features.npy"
    cli = str(Path(sys.executable).with_name("faceforge"))  # the console script a user runs
    measured = [_run([cli, "eval", "ijbc", "--root", str(root), "--features",
                      str(features), "--out", str(root / f"out{i}")], repo) for i in range(runs)]
    metrics = json.loads((root / "out0" / "ijbc.json").read_text())
    result: dict[str, object] = {
        "faceforge": {"runs": measured, "median_wall_s": statistics.median(m["wall_s"] for m in measured),
                      "peak_rss_gb": max(m["peak_rss_gb"] for m in measured), "phases_s": metrics["timings"],
                      "tar_percent": _tar_table(metrics)},
        "pairs": metrics["pairs"], "templates": metrics["templates"], "images": metrics["images"]}
    if arcface_torch.available():
        log = root / "insightface.log"
        with log.open("w") as out:
            start = time.perf_counter()
            proc = subprocess.Popen([sys.executable, "-m", "bench.insightface_ijbc", str(root), str(features),
                                     str(root / "insightface")], cwd=repo, stdout=out, stderr=subprocess.DEVNULL)
            _, status, usage = os.wait4(proc.pid, 0)
        result["insightface"] = {"wall_s": round(time.perf_counter() - start, 2),
                                 "peak_rss_gb": round(usage.ru_maxrss / 2**20, 2),
                                 "exit_code": os.waitstatus_to_exitcode(status),
                                 "tar_percent": _insightface_table(log)}
        result["speedup_vs_insightface"] = round(result["insightface"]["wall_s"]
                                                 / result["faceforge"]["median_wall_s"], 2)
    return result


def embedding_throughput(backbone: str, batch: int = 32, rounds: int = 3) -> dict[str, float]:
    import torch

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
        # generated in a child process: Linux carries a parent's peak RSS over fork + exec into the child's
        # ru_maxrss, so the measuring process must stay small
        ctx = multiprocessing.get_context("spawn")
        child = ctx.Process(target=make_protocol, args=(Path(tmp),))
        child.start()
        child.join()
        if child.exitcode != 0:
            raise RuntimeError("generating the protocol files failed")
        results["generate_s"] = round(time.perf_counter() - start, 1)
        results["ijbc_full_scale"] = whole_cli(Path(tmp))
    results["goal"] = ("whole `faceforge eval ijbc --features` process <= 10 s wall and <= 2 GB peak on 2 cores, "
                       ">= 8x InsightFace's eval_ijbc.py on the same files, same TAR@FAR")
    results["embedding_cpu"] = {name: embedding_throughput(name) for name in ("r50", "mbf")}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
