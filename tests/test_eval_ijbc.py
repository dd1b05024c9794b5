"""IJB-C end to end on the generated mini set: CLI, precomputed features, the eval stage, and bad input."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from components.evaluation.ijbc_meta import read_ijbc_meta
from components.sample.eval_sets import EvalSetConfig, detect_sources, write_eval_sets, write_ijbc_mini
from faceforge.cli import app
from pipelines import eval as eval_stage
from pipelines.params import ParamsError, load_params


def _invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_generator_writes_the_ijbc_layout_deterministically(eval_sets: Path, tmp_path: Path) -> None:
    meta = read_ijbc_meta(eval_sets / "ijbc_mini")
    assert len(np.unique(meta.templates)) == 20 and meta.pair_label.sum() == 4 * 10  # C(5,2) per subject
    assert len(meta.pair_label) == 20 * 19 // 2
    assert set(meta.galleries) == {"G1", "G2"} and len(meta.galleries["G1"][0]) == 2
    assert not set(meta.galleries["G1"][1]) & set(meta.galleries["G2"][1])  # disjoint halves, like IJB-C
    assert (np.bincount(np.unique(np.c_[meta.templates, meta.medias], axis=0)[:, 0]) >= 0).all()
    write_eval_sets(tmp_path / "again", EvalSetConfig(subjects=(31, 32, 33, 34), templates_per_subject=5,
                                                      bin_pairs=40, seed=1))
    assert _digest(tmp_path / "again") == _digest(eval_sets)


def test_a_large_set_lists_a_bounded_sample_of_template_pairs(tmp_path: Path) -> None:
    # At 10^5 images every template pair would be 10^9 pairs; each template gets at most 6 partners here.
    config = EvalSetConfig(subjects=(31, 32, 33), templates_per_subject=8, max_pairs_per_template=6)
    write_ijbc_mini(tmp_path / "set", detect_sources(config.subjects), config)
    meta = read_ijbc_meta(tmp_path / "set")
    first, second = (meta.template_ids[i] for i in meta.pair_index)
    assert (first < second).all() and len({*zip(first, second, strict=True)}) == len(first)  # no pair twice
    assert np.bincount(first).max() <= 6 and 0 < meta.pair_label.sum() < len(meta.pair_label)
    assert len(meta.galleries["G1"][0]) + len(meta.galleries["G2"][0]) == 3  # one gallery template per subject


def test_eval_ijbc_with_model_then_with_its_features(eval_sets: Path, model_dir: Path, tmp_path: Path) -> None:
    root = eval_sets / "ijbc_mini"
    result = _invoke("eval", "ijbc", "--root", root, "--model", model_dir, "--out", tmp_path / "a", "--workers", 0)
    assert result.exit_code == 0, result.output
    out = tmp_path / "a"
    assert {p.name for p in out.iterdir()} >= {"ijbc.json", "roc.png", "tar_far.md", "scores.npy", "features.npy",
                                               "roc"}
    metrics = json.loads((out / "ijbc.json").read_text())
    assert metrics["n_genuine"] == 40 and metrics["n_impostor"] == 150
    assert 0.0 <= metrics["tar_at_far_1e-1"] <= 1.0 and metrics["tar_at_far_1e-4"] is None  # 1/150 resolution
    assert set(metrics["identification"]) == {"G1", "G2", "mean"}
    # 150 impostor pairs resolve FAR 1e-2 at best: the decision thresholds at 1e-3..1e-5 are null, not guessed
    assert metrics["thresholds"]["far_1e-3"] == {"cosine": None, "impostor_pairs": 150, "impostors_above": 0}
    assert set(metrics["thresholds"]) == {"far_1e-3", "far_1e-4", "far_1e-5"}
    assert 0.0 <= metrics["identification"]["mean"]["rank1"] <= 1.0
    assert np.load(out / "features.npy").shape == (len(read_ijbc_meta(root).images), 128)

    result = _invoke("eval", "ijbc", "--root", root, "--features", out / "features.npy", "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "b" / "ijbc.json").read_text())
    strip = ("timings", "embed_images_per_s")
    assert {k: v for k, v in again.items() if k not in strip} == {k: v for k, v in metrics.items() if k not in strip}
    np.testing.assert_array_equal(np.load(tmp_path / "b" / "scores.npy"), np.load(out / "scores.npy"))


def _broken_root(eval_sets: Path, tmp_path: Path) -> Path:
    root = tmp_path / "ijbc"
    shutil.copytree(eval_sets / "ijbc_mini", root)
    return root


@pytest.mark.parametrize("damage, message", [
    ("missing_meta", r"ijbc_face_tid_mid\.txt: protocol file not found"),
    ("unknown_template", r"ijbc_template_pair_label\.txt:3: template 9999 has no images"),
    ("bad_number", r"ijbc_template_pair_label\.txt:2: 'x' is not an integer"),
    ("order_mismatch", r"ijbc_name_5pts_score\.txt:1: image '2\.jpg', but line 1"),
])
def test_bad_protocol_files_name_file_and_line(eval_sets: Path, tmp_path: Path, damage: str, message: str) -> None:
    root = _broken_root(eval_sets, tmp_path)
    meta = root / "meta"
    pairs = meta / "ijbc_template_pair_label.txt"
    lines = pairs.read_text().splitlines()
    if damage == "missing_meta":
        (meta / "ijbc_face_tid_mid.txt").unlink()
    elif damage == "unknown_template":
        lines[2] = "1 9999 0"
        pairs.write_text("\n".join(lines) + "\n")
    elif damage == "bad_number":
        lines[1] = "1 x 0"
        pairs.write_text("\n".join(lines) + "\n")
    else:
        names = meta / "ijbc_name_5pts_score.txt"
        rows = names.read_text().splitlines()
        names.write_text("\n".join([rows[1], rows[0], *rows[2:]]) + "\n")
    result = _invoke("eval", "ijbc", "--root", root, "--features", tmp_path / "f.npy", "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "out").exists()


def test_bad_features_are_refused(eval_sets: Path, tmp_path: Path) -> None:
    root = eval_sets / "ijbc_mini"
    n = len(read_ijbc_meta(root).images)
    np.save(tmp_path / "short.npy", np.ones((n - 1, 8), np.float32))
    result = _invoke("eval", "ijbc", "--root", root, "--features", tmp_path / "short.npy", "--out", tmp_path / "o")
    assert result.exit_code == 1 and f"short.npy: {n - 1} rows, but" in result.output
    bad = np.ones((n, 8), np.float32)
    bad[3, 5] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    result = _invoke("eval", "ijbc", "--root", root, "--features", tmp_path / "nan.npy", "--out", tmp_path / "o")
    assert result.exit_code == 1 and "nan.npy: row 3 (image 4.jpg, line 4 of ijbc_name_5pts_score.txt)" in result.output
    result = _invoke("eval", "ijbc", "--root", root, "--out", tmp_path / "o")
    assert result.exit_code == 1 and "exactly one of --model" in result.output
    assert not (tmp_path / "o").exists()


def test_eval_stage_reports_and_failure_leaves_previous_results(eval_sets: Path, model_dir: Path,
                                                               workdir: Path) -> None:
    overrides = [f"eval.model={model_dir}", f"eval.ijbc_root={eval_sets / 'ijbc_mini'}", "eval.loader_workers=0",
                 f"eval.ijbc_hard_root={eval_sets / 'ijbc_hard'}",
                 f"eval.verification={{holdout: {eval_sets / 'orl_holdout.bin'}}}", "eval.folds=4",
                 f"eval.reference_photos={eval_sets / 'photos'}"]
    shutil.copy(Path(__file__).parents[1] / "params.yaml", workdir / "params.yaml")
    report = eval_stage.run(load_params(workdir / "params.yaml", overrides))
    holdout = report["verification"]["holdout"]
    assert holdout["pairs"] == 40 and 0 <= holdout["accuracy"] <= 1
    written = json.loads((workdir / "reports" / "eval.json").read_text())
    assert written["ijbc"]["pairs"] == written["ijbc_hard"]["pairs"] == 190  # the same templates, degraded
    assert written["ijbc_hard"]["images"] == report["ijbc_hard"]["images"] > 0
    for name in ("roc.png", "tar_far.md", "roc/ijbc.csv", "roc/ijbc_hard.csv", "roc/holdout.csv", "ijbc/scores.npy",
                 "ijbc/features.npy", "reference.npz"):  # reference.npz: the drift check's (tests/test_drift.py)
        assert (workdir / "data" / "eval" / name).is_file(), name
    assert "| holdout |" in (workdir / "data" / "eval" / "tar_far.md").read_text()
    before = _digest(workdir / "data" / "eval"), (workdir / "reports" / "eval.json").read_bytes()

    (workdir / "bad.bin").write_bytes(b"\x80\x04junk")
    result = _invoke("eval", "--params", workdir / "params.yaml", *sum([["--set", o] for o in overrides], []),
                     "--set", f"eval.verification={{holdout: {workdir / 'bad.bin'}}}")
    assert result.exit_code == 1 and "bad.bin: not a readable verification .bin" in result.output
    assert (_digest(workdir / "data" / "eval"), (workdir / "reports" / "eval.json").read_bytes()) == before


def test_eval_people_must_be_unseen(tmp_path: Path) -> None:
    params = Path(__file__).parents[1] / "params.yaml"
    with pytest.raises(ParamsError, match="eval people must be unseen"):
        load_params(params, ["data.sample_identities=36"])
    with pytest.raises(ParamsError, match=r"eval\.fars\.0: Input should be greater than 0"):
        load_params(params, ["eval.fars=[0.0, 0.1]"])


def test_cross_version_compatibility_follows_bcts_criterion(eval_sets: Path) -> None:
    """New probes against old templates: a model that keeps the old space (old + small noise) meets BCT's
    criterion; the same geometry in another basis (a rotation: new-new as good as old-old) does not; other
    embedding sizes are not comparable at all."""
    from components.evaluation.compatibility import cross_version
    from components.evaluation.ijbc import IjbcOptions

    meta = read_ijbc_meta(eval_sets / "ijbc_mini")
    subject_of = {int(t): int(s) for templates, subjects in [*meta.galleries.values(), meta.probes]
                  for t, s in zip(templates, subjects, strict=True)}
    rng = np.random.default_rng(0)
    centres = {s: rng.standard_normal(64) for s in set(subject_of.values())}
    old = np.stack([centres[subject_of[int(t)]] + 1.2 * rng.standard_normal(64) for t in meta.templates])
    old = old.astype(np.float32)
    options = IjbcOptions(detector_score=False)
    close = cross_version(meta, (old + 0.05 * rng.standard_normal(old.shape)).astype(np.float32), old, options)
    rotation = np.linalg.qr(rng.standard_normal((64, 64)))[0].astype(np.float32)
    rotated = cross_version(meta, old @ rotation, old, options)
    assert close["comparable"] and close["bct"], close
    assert rotated["comparable"] and not rotated["bct"], rotated
    for pair in ("old_old", "new_new"):  # a rotation keeps every distance: only the cross scores break
        assert rotated[pair] == pytest.approx(rotated["old_old"], abs=1e-4)
    assert rotated["new_old"]["tar_at_far_1e-1"] < 0.5 * rotated["old_old"]["tar_at_far_1e-1"]
    assert cross_version(meta, old[:, :32], old, options) == {
        "comparable": False, "bct": False, "reason": "embedding sizes differ (32 new, 64 old)"}
