"""detect -> align -> quality_filter -> pack on real sample faces plus the bad-input set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from components.io.images import read_rgb
from components.recordio.dataset import FaceRecordDataset
from components.recordio.insightface import read_property
from pipelines import align, detect, pack, quality_filter
from pipelines.params import Params, load_params
from tests.bad_inputs import write_bad_inputs


def _params(workdir: Path, **sections: dict) -> Params:
    tree = {"detect": {"workers": 2}, "quality_filter": {"min_images_per_identity": 2}}
    for key, value in sections.items():
        tree.setdefault(key, {}).update(value)
    (workdir / "params.yaml").write_text(yaml.safe_dump(tree))
    return load_params(workdir / "params.yaml")


def _rejected(path: Path) -> dict[str, str]:
    frame = pd.read_csv(path)
    assert list(frame.columns[:3]) == ["path", "stage", "reason"]
    return dict(zip(frame.path, frame.reason, strict=True))


@pytest.fixture
def bad_raw(raw_copy: Path) -> tuple[Path, dict[str, str | None]]:
    face = read_rgb(next(raw_copy.glob("*/*.jpg")), 10**8)
    return raw_copy, write_bad_inputs(raw_copy, face)


def test_whole_data_half_survives_bad_inputs(workdir: Path, bad_raw) -> None:
    raw, expected = bad_raw
    params = _params(workdir)
    report = detect.run(params)
    align.run(params)
    qf = quality_filter.run(params)
    packed = pack.run(params)

    rejected = _rejected(params.detect.out_dir / "rejected.csv")
    rejected.update(_rejected(params.align.out_dir / "rejected.csv"))
    rejected.update(_rejected(params.quality_filter.out_dir / "rejected.csv"))
    # No output names where this checkout lives: the same bytes in any clone and from any Ray node. detect's
    # rows belong to the photo's bytes (cached by SHA-256): they name no file; rejected.csv's path column does.
    detections = pd.read_parquet(params.detect.out_dir / "detections.parquet")
    assert not any(str(workdir) in str(d) or str(raw) in str(d) for d in detections.detail), detections.detail
    assert not any(p in str(d) for p, d in zip(detections.path, detections.detail, strict=True))
    for rel, reason in expected.items():
        if reason is None:
            assert rel not in rejected or rejected[rel] in ("duplicate",), f"{rel} was dropped: {rejected.get(rel)}"
        else:
            assert rejected.get(rel) == reason, f"{rel}: expected {reason}, got {rejected.get(rel)}"

    # Every listed photo is either detected or rejected, and the report counts add up.
    assert report["images_listed"] == report["images_detected"] + report["images_rejected"]
    assert sum(report["rejected_by_reason"].values()) == report["images_rejected"]
    assert json.loads(Path("reports/detect.json").read_text())["images_detected"] == report["images_detected"]

    # The usable odd formats (alpha, grey, CMYK, 16-bit, EXIF-rotated) reached the aligned set.
    aligned = pd.read_parquet(params.align.out_dir / "manifest.parquet")
    assert {"bad inputs ü/alpha ü.png", "bad inputs ü/cmyk.jpg", "bad inputs ü/rotated.jpg"} <= set(aligned.path)

    assert qf["validation"]["success"]
    assert Path(params.quality_filter.out_dir / "data_docs" / "index.html").is_file()
    assert Path(params.quality_filter.out_dir / "quality.png").stat().st_size > 0
    assert packed["images"] == qf["images_kept"]
    classes, h, w = read_property(params.pack.out_dir)
    assert (classes, h, w) == (qf["identities_kept"], 112, 112)
    ds = FaceRecordDataset(params.pack.out_dir, random_flip=False)
    labels = [ds.read(i)[1] for i in range(len(ds))]
    assert labels == sorted(labels) and set(labels) == set(range(classes))


def test_new_photos_are_the_only_ones_detected_aligned_and_measured(workdir: Path, raw_copy: Path) -> None:
    params = _params(workdir)
    first = {stage.STAGE: stage.run(params) for stage in (detect, align, quality_filter)}
    assert first["detect"]["detected_this_run"] == first["detect"]["images_listed"]
    assert first["align"]["reused"] == first["quality_filter"]["reused"] == 0
    source = next(raw_copy.glob("*/*.jpg"))
    (raw_copy / "newcomer").mkdir()
    for i in range(3):  # new content: flip and crop so the bytes differ
        rgb = read_rgb(source, 10**8)[:, ::-1][i:]
        from PIL import Image

        Image.fromarray(np.ascontiguousarray(rgb)).save(raw_copy / "newcomer" / f"{i}.jpg")
    second = {stage.STAGE: stage.run(params) for stage in (detect, align, quality_filter)}
    assert second["detect"]["detected_this_run"] == 3
    assert second["detect"]["cache_hits"] == first["detect"]["images_listed"]
    table = pd.read_parquet(params.detect.out_dir / "detections.parquet")
    assert len(table) == first["detect"]["images_listed"] + 3
    assert second["align"]["aligned_this_run"] == 3 and second["align"]["reused"] == first["align"]["images_in"]
    assert second["quality_filter"]["measured_this_run"] == second["align"]["images_aligned"] - first["align"][
        "images_aligned"]

    # What was reused equals what a run from nothing makes: crops byte for byte, manifests row for row.
    incremental = {d: _contents(d) for d in (params.align.out_dir, params.quality_filter.out_dir)}
    for folder in incremental:
        (folder / "fingerprint.txt").unlink()
    align.run(params)
    quality_filter.run(params)
    for folder, contents in incremental.items():
        assert _contents(folder) == contents, folder


def _contents(folder: Path) -> dict[str, object]:
    """A data folder's crops (bytes) and manifest (rows), leaving out files that hold run-specific bytes."""
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*.jpg"))}
    return files | {"manifest": pd.read_parquet(folder / "manifest.parquet").to_json()}


def test_failed_validation_stops_and_keeps_previous_output(workdir: Path, raw_copy: Path) -> None:
    params = _params(workdir)
    detect.run(params)
    align.run(params)
    quality_filter.run(params)
    before = (params.quality_filter.out_dir / "manifest.parquet").read_bytes()

    strict = _params(workdir, quality_filter={"min_images_per_identity": 2, "min_identities": 500})
    with pytest.raises(quality_filter.DataValidationError) as err:
        quality_filter.run(strict)
    message = str(err.value)
    assert "FAILED" in message and "kept_identity" in message and "500" in message
    assert (params.quality_filter.out_dir / "manifest.parquet").read_bytes() == before
    assert (workdir / "reports" / "data_docs_failed" / "index.html").is_file()


def test_interrupted_stage_leaves_no_half_output(workdir: Path, raw_copy: Path, monkeypatch) -> None:
    params = _params(workdir)
    detect.run(params)
    align.run(params)
    before = sorted(p.name for p in params.align.out_dir.rglob("*"))

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # what a killed run looks like from inside the stage

    monkeypatch.setattr(align, "parallel_map", boom)
    with pytest.raises(KeyboardInterrupt):
        align.run(params)
    assert sorted(p.name for p in params.align.out_dir.rglob("*")) == before
    assert not [p for p in params.align.out_dir.parent.iterdir() if p.name.startswith(".aligned")]
