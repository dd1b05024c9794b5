"""``faceforge sample``: write the bundled real faces as raw photos into ``data.raw_dir`` (the demo input)."""

from __future__ import annotations

from typing import Any

from components.sample.raw_photos import SampleConfig, write_sample_raw
from pipelines.common import timed, write_report
from pipelines.params import Params


def run(params: Params) -> dict[str, Any]:
    d = params.data
    config = SampleConfig(identities=d.sample_identities, images_per_identity=d.sample_images_per_identity,
                          canvas=d.sample_canvas, second_face_fraction=d.second_face_fraction, seed=d.seed)
    report: dict[str, Any] = {"raw_dir": str(d.raw_dir)}
    with timed(report):
        report["images"] = write_sample_raw(d.raw_dir, config)
    report["identities"] = d.sample_identities
    write_report("sample", report)
    return report
