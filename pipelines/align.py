"""DVC stage ``align``: detections -> 112x112 ArcFace crops + ``manifest.parquet`` + ``rejected.csv``."""

from __future__ import annotations

from typing import Any

import pandas as pd

from components.align.batch import AlignJob, AlignWorker
from components.executor import parallel_map
from components.io.atomic import atomic_dir
from components.io.rejects import Rejection, write_rejected
from pipelines.common import timed, write_report
from pipelines.params import Params

STAGE = "align"


def run(params: Params) -> dict[str, Any]:
    p = params.align
    detections = pd.read_parquet(params.detect.out_dir / "detections.parquet")
    ok = detections[detections.status == "ok"].reset_index(drop=True)
    report: dict[str, Any] = {}
    with timed(report), atomic_dir(p.out_dir) as tmp:
        job = AlignJob(params.data.raw_dir.resolve(), tmp.resolve(), p.image_size, p.jpeg_quality,
                       params.detect.max_pixels)  # absolute: Ray actors run in other folders
        items = ok[["path", "identity", "sha256", "landmarks"]].to_dict("records")
        results = pd.DataFrame(parallel_map(AlignWorker, job, items, workers=params.detect.workers, desc=STAGE,
                                            shared={"data.raw_dir": job.raw_root, "align.out_dir": job.out_root}))
        table = pd.concat([ok.drop(columns=["status", "detail"]), results], axis=1)
        kept = table[table.status == "ok"].drop(columns=["status", "detail"])
        kept.to_parquet(tmp / "manifest.parquet", index=False)
        rejects = [Rejection(r.path, STAGE, r.status, r.detail) for r in table.itertuples() if r.status != "ok"]
        by_reason = write_rejected(tmp / "rejected.csv", rejects)
    report.update(images_in=len(ok), images_aligned=len(kept), images_rejected=len(rejects),
                  rejected_by_reason=by_reason, identities=int(kept.identity.nunique()))
    write_report(STAGE, report)
    return report
