"""[M] The data half at scale: `dvc repro` up to pack on 1k / 10k / 100k photos, stage by stage, with DVC itself.

For each size (``python -m bench.data_scale 1000 10000 100000``; the default), in a scratch DVC project under
``reports/bench/data_scale/`` that holds the repository's dvc.yaml, params.yaml and code:
- the scale corpus (components/sample/corpus.py: synthetic identities, for cost only), generated once per size
  and reused by later runs;
- ``dvc add data/raw``, then ``dvc repro <stage>`` for detect, align, quality_filter and pack, each a whole
  command: seconds, seconds per 1,000 photos, the peak RSS of its largest process, and its outputs' size;
- the bare detector (ONNX Runtime on the same decoded photos, the same process pool; its rate on the first
  10,000) in the same run: the limit detect is compared with;
- a no-op ``dvc status`` and ``dvc repro`` (goal <= 3 s each), ``dvc push`` to a local remote, and ``dvc pull``
  into an empty cache and workspace;
- 1% new photos (the corpus extended in place), ``dvc add`` + ``dvc repro`` up to pack again: each stage's time
  next to the full run's (goal: the whole <= 5%), and how many photos detect ran on.
Writes ``reports/bench/data_scale.json`` after every size (a long run keeps what it measured).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.data_stages import _BareDetect
from bench.stage_command import measure_command, measure_sizes
from components.detect.factory import DetectorConfig
from components.executor import default_workers, parallel_map
from components.sample.corpus import CorpusConfig, write_corpus
from pipelines.params import load_params

REPO = Path(__file__).parents[1]
WORK = REPO / "reports/bench/data_scale"
OUT = REPO / "reports/bench/data_scale.json"
STAGES = ("detect", "align", "quality_filter", "pack")
IDENTITY_SIZE = 20  # photos per identity folder: 100k photos -> 5,000 identities
BARE_PHOTOS = 10_000  # the bare detector's sample: its rate, without a second hour at 100k
DVC = [sys.executable, "-m", "dvc"]


def _size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 2**20, 1)


def _corpus(photos: int) -> tuple[Path, bool]:
    """The corpus of ``photos`` photos, generated once (``.done`` marks a complete one), and whether it was reused."""
    root = WORK / f"corpus_{photos}"
    reused = (root / ".done").is_file()
    if not reused:
        shutil.rmtree(root, ignore_errors=True)
        write_corpus(root / "raw", CorpusConfig(photos=photos, identities=max(1, photos // IDENTITY_SIZE)))
        (root / ".done").write_text(json.dumps({"photos": photos}))
    return root / "raw", reused


def _project(photos: int, label: str = "project") -> Path:
    """A fresh DVC project with the repository's pipeline and a hard-linked copy of the corpus as data/raw."""
    root = WORK / f"{label}_{photos}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    for folder in ("pipelines", "components"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "data").mkdir()
    subprocess.run(["cp", "-al", str(_corpus(photos)[0]), str(root / "data" / "raw")], check=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([*DVC, "init", "-q"], cwd=root, check=True)
    return root


def _stages(root: Path, photos: int, env: dict[str, str] | None = None) -> dict[str, Any]:
    rows = {}
    for stage in STAGES:
        row = measure_command([*DVC, "repro", "-s", "-q", stage], root, env=env)
        row["seconds_per_1000_photos"] = round(row["seconds"] * 1000 / photos, 3)
        row["output_mb"] = {str(p): _size_mb(root / p) for p in _outputs(root, stage)}
        rows[stage] = row
    return rows


def _outputs(root: Path, stage: str) -> list[str]:
    import yaml

    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return [out["path"] for out in lock["stages"][stage].get("outs", [])]


def _bare_detector(root: Path) -> dict[str, float]:
    """ONNX Runtime's detector alone on the first BARE_PHOTOS photos: a rate, so a sample of them is enough."""
    params = load_params(root / "params.yaml")
    raw = root / params.data.raw_dir
    files = sorted(p.relative_to(raw).as_posix() for p in raw.glob("*/*") if p.is_file())[:BARE_PHOTOS]
    d = params.detect
    config = DetectorConfig(d.model_path, d.model_kind, d.input_size, d.score_threshold, d.nms_threshold)
    start = time.perf_counter()
    parallel_map(_BareDetect, (config, raw, d.max_pixels), [{"path": f} for f in files], workers=d.workers, desc="bare")
    seconds = time.perf_counter() - start
    return {"photos": len(files), "seconds": round(seconds, 3), "photos_per_s": round(len(files) / seconds, 2)}


def _dvc_round_trip(root: Path) -> dict[str, Any]:
    remote = WORK / f"remote_{root.name}"
    shutil.rmtree(remote, ignore_errors=True)
    subprocess.run([*DVC, "remote", "add", "-q", "-f", "-d", "bench", str(remote)], cwd=root, check=True)
    push = measure_command([*DVC, "push", "-q", "--with-deps", "pack"], root)
    shutil.rmtree(root / ".dvc" / "cache")
    for stage_out in ("data/raw", "data/detect", "data/detect_cache", "data/aligned", "data/quality", "data/packed"):
        shutil.rmtree(root / stage_out, ignore_errors=True)
    pull = measure_command([*DVC, "pull", "-q", "--with-deps", "pack"], root)
    return {"push": push, "pull": pull, "remote_mb": _size_mb(remote)}


def measure(photos: int) -> dict[str, Any]:
    row: dict[str, Any] = {"photos": photos, "identities": max(1, photos // IDENTITY_SIZE)}
    start = time.perf_counter()
    _, reused = _corpus(photos)
    row.update({"corpus_reused": True} if reused else {"corpus_seconds": round(time.perf_counter() - start, 1)})
    root = _project(photos)
    row["dvc_add"] = measure_command([*DVC, "add", "-q", "data/raw"], root)
    row["stages"] = _stages(root, photos)
    detect = json.loads((root / "reports" / "detect.json").read_text())
    row["bare_detector"] = _bare_detector(root)
    detect_rate = photos / row["stages"]["detect"]["seconds"]  # the whole command: DVC, imports, hashing
    row["detect_vs_bare"] = round(detect_rate / row["bare_detector"]["photos_per_s"], 3)
    row["detect_report"] = {k: detect.get(k) for k in ("images_listed", "detected_this_run", "cache_hits")}
    row["noop_dvc_status"] = measure_command([*DVC, "status", "--with-deps", "pack"], root)  # up to pack: what ran
    row["noop_dvc_repro"] = measure_command([*DVC, "repro", "-q", "pack"], root)
    row["dvc_round_trip"] = _dvc_round_trip(root)

    more = photos + max(1, photos // 100)
    write_corpus(root / "data" / "raw", CorpusConfig(photos=more, identities=row["identities"]), start=photos)
    row["one_percent_more"] = {"photos_added": more - photos,
                               "dvc_add": measure_command([*DVC, "add", "-q", "data/raw"], root),
                               "stages": _stages(root, more - photos)}
    detect = json.loads((root / "reports" / "detect.json").read_text())
    row["one_percent_more"]["detected_this_run"] = detect.get("detected_this_run")
    full = sum(s["seconds"] for s in row["stages"].values()) + row["dvc_add"]["seconds"]
    added = (sum(s["seconds"] for s in row["one_percent_more"]["stages"].values())
             + row["one_percent_more"]["dvc_add"]["seconds"])
    row["one_percent_more"]["fraction_of_full_run"] = round(added / full, 4)
    return row


def main() -> None:
    measure_sizes(measure, [int(a) for a in sys.argv[1:]] or [1000, 10_000, 100_000], OUT, "photos",
                  {"machine": f"{default_workers()} CPU cores"})


if __name__ == "__main__":
    main()
