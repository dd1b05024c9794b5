"""DVC stage ``align``: detections -> 112x112 ArcFace crops + ``manifest.parquet`` + ``rejected.csv``.

Incremental: a face whose photo (SHA-256), identity folder and landmarks are unchanged since the previous
output, made with the same settings and code, keeps its crop (hard-linked) instead of being decoded and
warped again (components/io/reuse.py); only new or changed photos are aligned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

import components.align.batch
import components.align.similarity
import components.io.images
from components.align.batch import AlignJob, AlignWorker
from components.executor import parallel_map
from components.io.atomic import atomic_dir
from components.io.rejects import Rejection, write_rejected
from components.io.reuse import (
    fingerprint,
    link_file,
    matching_rows,
    previous_manifest,
    reuse_or_compute,
    write_fingerprint,
)
from pipelines.common import timed, write_report
from pipelines.params import Params

STAGE = "align"
RESULTS = ["aligned_path", "aligned_landmarks", "interocular"]
_CODE = [components.align.batch, components.align.similarity, components.io.images]


def _key(row: dict[str, Any]) -> tuple:
    return row["identity"], row["sha256"], tuple(float(v) for v in row["landmarks"])


def _reusable(row: dict[str, Any] | None, previous: Path) -> dict[str, Any] | None:
    """The previous row as a result, if its crop is still there (a file deleted by hand is made again)."""
    if row is None or not (previous / row["aligned_path"]).is_file():
        return None
    return {"status": "ok", "detail": "", **{k: row[k] for k in RESULTS}}


def run(params: Params) -> dict[str, Any]:
    p = params.align
    detections = pd.read_parquet(params.detect.out_dir / "detections.parquet")
    ok = detections[detections.status == "ok"].reset_index(drop=True)
    stamp = fingerprint((p.image_size, p.jpeg_quality, params.detect.max_pixels), _CODE)
    previous = previous_manifest(p.out_dir, stamp, ["identity", "sha256", "landmarks", *RESULTS])
    report: dict[str, Any] = {}
    with timed(report), atomic_dir(p.out_dir) as tmp:
        job = AlignJob(params.data.raw_dir.resolve(), tmp.resolve(), p.image_size, p.jpeg_quality,
                       params.detect.max_pixels)  # absolute: Ray actors run in other folders
        items = ok[["path", "identity", "sha256", "landmarks"]].to_dict("records")
        reused = [_reusable(row, p.out_dir) for row in matching_rows(previous, items, _key)]
        for row in filter(None, reused):
            link_file(p.out_dir / row["aligned_path"], tmp / row["aligned_path"])
        rows, aligned_now = reuse_or_compute(items, reused, lambda todo: parallel_map(
            AlignWorker, job, todo, workers=params.detect.workers, desc=STAGE,
            shared={"data.raw_dir": job.raw_root, "align.out_dir": job.out_root}))
        results = pd.DataFrame(rows)
        table = pd.concat([ok.drop(columns=["status", "detail"]), results], axis=1)
        kept = table[table.status == "ok"].drop(columns=["status", "detail"])
        kept.to_parquet(tmp / "manifest.parquet", index=False)
        write_fingerprint(tmp, stamp)
        rejects = [Rejection(r.path, STAGE, r.status, r.detail) for r in table.itertuples() if r.status != "ok"]
        by_reason = write_rejected(tmp / "rejected.csv", rejects)
    report.update(images_in=len(ok), images_aligned=len(kept), images_rejected=len(rejects),
                  rejected_by_reason=by_reason, identities=int(kept.identity.nunique()),
                  aligned_this_run=aligned_now, reused=len(ok) - aligned_now)
    write_report(STAGE, report)
    return report
