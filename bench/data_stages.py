"""Benchmarks for the data half, written to ``reports/bench/data_stages.json``.

* detect+align images/s for the whole stage vs. the bare detector on the same photos (pipeline overhead)
* pack images/s
* FaceRecordDataset read+decode+flip images/s through a DataLoader with 2 workers
* ``dvc repro`` wall time when nothing changed

Run from the repo root after ``make demo`` (it uses the demo's ``data/``): ``make bench``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from components.detect.factory import DetectorConfig, load_detector
from components.executor import default_workers, parallel_map
from components.io.images import ImageRejected, read_rgb
from components.recordio.dataset import FaceRecordDataset
from pipelines import align, detect, pack
from pipelines.params import load_params

OUT = Path("reports/bench/data_stages.json")


class _BareDetect:
    """The detector alone on decoded images: the floor the stage is compared with."""

    def __init__(self, config: tuple[DetectorConfig, Path, int]) -> None:
        self.detector = load_detector(config[0])
        self.root, self.max_pixels = config[1], config[2]

    def _one(self, path: str) -> int:
        try:
            rgb = read_rgb(self.root / path, self.max_pixels)
        except ImageRejected:  # a hostile file: the stage rejects it at the same decoding step
            return -1
        return len(self.detector.detect(rgb))

    def __call__(self, items: list[dict]) -> list[dict]:
        return [{"n": self._one(i["path"])} for i in items]


def main() -> None:
    params = load_params("params.yaml")
    root = params.data.raw_dir
    files = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*") if p.is_file())
    p = params.detect
    config = DetectorConfig(p.model_path, p.model_kind, p.input_size, p.score_threshold, p.nms_threshold)
    results: dict = {"machine": {"cpus": default_workers(), "python": platform.python_version(),
                                 "processor": platform.processor()}, "images": len(files)}

    start = time.perf_counter()
    parallel_map(_BareDetect, (config, root, p.max_pixels), [{"path": f} for f in files], workers=p.workers,
                 desc="bare")
    bare = time.perf_counter() - start

    cache = Path("data/detect_cache")
    for stale in cache.glob("detections-*.parquet"):
        stale.unlink()  # force a cold detect
    start = time.perf_counter()
    detect.run(params)
    align.run(params)
    stage = time.perf_counter() - start
    results["detect_align"] = {
        "stage_images_per_s": round(len(files) / stage, 2),
        "bare_detector_images_per_s": round(len(files) / bare, 2),
        "overhead_fraction": round(stage / bare - 1, 4),
    }

    start = time.perf_counter()
    report = pack.run(params)
    results["pack_images_per_s"] = round(report["images"] / (time.perf_counter() - start), 1)

    dataset = FaceRecordDataset(params.pack.out_dir)
    repeats = max(1, 20000 // len(dataset))
    indices = list(range(len(dataset))) * repeats
    loader = DataLoader(torch.utils.data.Subset(dataset, indices), batch_size=128, num_workers=2)
    start = time.perf_counter()
    seen = sum(len(y) for _, y in loader)
    results["dataset_read_decode_flip_images_per_s_2_workers"] = round(seen / (time.perf_counter() - start), 1)

    subprocess.run(["dvc", "repro", "-q"], check=True)  # settle the lock after the runs above
    times = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(["dvc", "repro", "-q"], check=True, env=os.environ)
        times.append(time.perf_counter() - start)
    results["dvc_repro_noop_seconds"] = round(min(times), 3)

    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
