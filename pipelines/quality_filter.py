"""DVC stage ``quality_filter``: measure, filter and validate aligned faces (fail-closed on bad data).

Incremental: a crop already measured by the previous output (same crop file, landmarks, align fingerprint and
measuring code) keeps its measurements (components/io/reuse.py); only new crops are decoded. The thresholds,
the near-duplicate search, the plot and the validation suite always run on the whole table: they are cheap
per row, and a new photo can change an identity's duplicates and counts.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd

import components.io.images
import components.quality.batch
import components.quality.metrics
from components.executor import parallel_map
from components.io.atomic import atomic_dir
from components.io.rejects import Rejection, write_rejected
from components.io.reuse import (
    fingerprint,
    matching_rows,
    previous_manifest,
    read_fingerprint,
    reuse_or_compute,
    write_fingerprint,
)
from components.quality.batch import QualityWorker
from components.quality.filter import QualityThresholds, apply_thresholds
from components.quality.plots import plot_quality
from components.quality.validation import validate_frame
from pipelines.common import REPORTS, timed, write_report
from pipelines.params import Params

STAGE = "quality_filter"
SUITE = Path(__file__).parent / "expectations" / "quality_manifest.json"
FAILED_DOCS = REPORTS / "data_docs_failed"
MEASURES = ["blur", "brightness", "yaw", "pitch", "phash"]
_CODE = [components.quality.batch, components.quality.metrics, components.io.images]


class DataValidationError(RuntimeError):
    """The manifest broke a critical expectation; the message is the readable summary."""


def _key(row: dict[str, Any]) -> tuple:
    return row["aligned_path"], tuple(float(v) for v in row["aligned_landmarks"])


def run(params: Params) -> dict[str, Any]:
    p = params.quality_filter
    aligned = pd.read_parquet(params.align.out_dir / "manifest.parquet")
    made_by = read_fingerprint(params.align.out_dir)
    stamp = None if made_by is None else fingerprint(made_by, _CODE)
    previous = previous_manifest(p.out_dir, stamp, ["aligned_path", "aligned_landmarks", *MEASURES])
    report: dict[str, Any] = {}
    with timed(report), atomic_dir(p.out_dir) as tmp:
        items = aligned[["aligned_path", "aligned_landmarks"]].to_dict("records")
        reused = [None if old is None else {**{k: old[k] for k in MEASURES}, "measure_error": ""}
                  for old in matching_rows(previous, items, _key)]
        aligned_dir = params.align.out_dir.resolve()  # absolute: Ray actors run in other folders
        rows, measured_now = reuse_or_compute(items, reused, lambda todo: parallel_map(
            QualityWorker, aligned_dir, todo, workers=params.detect.workers, desc=STAGE,
            shared={"align.out_dir": aligned_dir}))
        measured = pd.DataFrame(rows)
        table = pd.concat([aligned.reset_index(drop=True), measured], axis=1)
        unreadable = table[table.measure_error != ""]
        table = table[table.measure_error == ""].drop(columns="measure_error").reset_index(drop=True)
        thresholds = QualityThresholds(**{k: v for k, v in p.model_dump().items()
                                          if k in QualityThresholds.__dataclass_fields__})
        table["status"] = apply_thresholds(table, thresholds)
        table["rejected"] = (table.status != "ok").astype(int)
        table["kept_identity"] = table.identity.where(table.status == "ok")
        table.to_parquet(tmp / "manifest.parquet", index=False)
        if stamp is not None:
            write_fingerprint(tmp, stamp)
        rejects = [Rejection(r.path, STAGE, r.status, "") for r in table.itertuples() if r.status != "ok"]
        rejects += [Rejection(r.path, STAGE, "unreadable", r.measure_error) for r in unreadable.itertuples()]
        by_reason = write_rejected(tmp / "rejected.csv", rejects)
        plot_quality(table, {"score": (p.min_score, None), "interocular": (p.min_interocular, None),
                             "blur": (p.min_blur, None), "yaw": (None, p.max_yaw), "pitch": (None, p.max_pitch),
                             "brightness": (p.min_brightness, p.max_brightness)}, tmp / "quality.png")

        summary = validate_frame(table, SUITE, {"max_rejected_fraction": p.max_rejected_fraction,
                                                "min_identities": p.min_identities}, tmp / "data_docs")
        if not summary.success:
            shutil.rmtree(FAILED_DOCS, ignore_errors=True)
            shutil.copytree(tmp / "data_docs", FAILED_DOCS)
            raise DataValidationError(f"{summary.describe()}\nData Docs: {FAILED_DOCS / 'index.html'}")
    shutil.rmtree(FAILED_DOCS, ignore_errors=True)
    kept = table[table.status == "ok"]
    report.update(
        images_in=len(aligned), images_kept=len(kept), images_rejected=len(rejects),
        rejected_fraction=round(len(rejects) / max(1, len(aligned)), 4), rejected_by_reason=by_reason,
        identities_kept=int(kept.identity.nunique()), measured_this_run=measured_now, reused=len(items) - measured_now,
        validation={"success": summary.success, "evaluated": summary.evaluated, "warnings": len(summary.warnings)},
        quality={c: round(float(kept[c].median()), 3) for c in ("blur", "brightness", "yaw", "pitch", "score")}
        if len(kept) else {},
    )
    write_report(STAGE, report)
    return report
