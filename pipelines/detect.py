"""DVC stage ``detect``: raw photos -> ``detections.parquet`` (one row per photo) + ``rejected.csv``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from components.detect.batch import DetectJob, DetectWorker
from components.detect.cache import DetectionCache
from components.detect.factory import DetectorConfig, detector_fingerprint
from components.executor import parallel_map
from components.io.atomic import atomic_path
from components.io.raw_folder import list_raw_images
from components.io.rejects import Rejection, write_rejected
from pipelines.common import timed, write_report
from pipelines.params import Params

STAGE = "detect"
CACHE_DIR = Path("data/detect_cache")


def run(params: Params) -> dict[str, Any]:
    p = params.detect
    root = params.data.raw_dir
    config = DetectorConfig(p.model_path, p.model_kind, p.input_size, p.score_threshold, p.nms_threshold)
    report: dict[str, Any] = {}
    with timed(report):
        images, listing_rejects = list_raw_images(root, STAGE)
        fingerprint = detector_fingerprint(config)
        cache = DetectionCache(CACHE_DIR, fingerprint)
        hashes = cache.hash_images(root, images)
        known = cache.load()
        todo = [{"path": im.path, "sha256": h} for im, h in zip(images, hashes, strict=True) if h not in known]
        todo = list({item["sha256"]: item for item in todo}.values())  # identical bytes are detected once
        job = DetectJob(config, root.resolve(), p.centre_weight, p.max_pixels)  # absolute: Ray actors run elsewhere
        fresh = parallel_map(DetectWorker, job, todo, workers=p.workers, desc=STAGE,
                             shared={"data.raw_dir": root})
        known.update({row["sha256"]: row for row in fresh})
        cache.save(known)

        rows = [dict(known[h], path=im.path, identity=im.identity) for im, h in zip(images, hashes, strict=True)]
        table = pd.DataFrame(rows, columns=["path", "identity", "sha256", "status", "detail", "width", "height",
                                            "bbox", "landmarks", "score", "n_faces"])
        p.out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(p.out_dir / "detections.parquet") as tmp:
            table.to_parquet(tmp, index=False)
        rejects = listing_rejects + [Rejection(r.path, STAGE, r.status, r.detail)
                                     for r in table.itertuples() if r.status != "ok"]
        by_reason = write_rejected(p.out_dir / "rejected.csv", rejects)

    ok = table[table.status == "ok"]
    report.update(
        images_listed=len(images) + len(listing_rejects),
        images_detected=int(len(ok)),
        images_rejected=len(rejects),
        rejected_by_reason=by_reason,
        detected_this_run=len(fresh),
        cache_hits=len(images) - len(fresh),
        photos_with_several_faces=int((ok.n_faces > 1).sum()),
        mean_score=round(float(ok.score.mean()), 4) if len(ok) else 0.0,
        detector_fingerprint=fingerprint,
    )
    report["images_per_second"] = round(len(fresh) / report["seconds"], 2) if report["seconds"] else 0.0
    write_report(STAGE, report)
    return report
