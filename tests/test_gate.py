"""The promotion gate is fail-closed: every check, every reason, missing or NaN metrics fail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.io.checksums import sha256_file
from faceforge.cli import app
from flows.gate import GateConfig, evaluate_gate, lookup

CONFIG = GateConfig(metric="ijbc.tar_at_far_1e-4", tracked=("verification.lfw.accuracy",), max_regression=0.01,
                    floors={"ijbc.tar_at_far_1e-4": 0.5, "verification.lfw.accuracy": 0.9})


def _reports(root: Path, tar: float | None = 0.8, accuracy: float = 0.95, quantize_ok: bool = True,
             served: str = "fp32") -> Path:
    """Reports of a run whose served file (model.onnx) is its FP32 or its INT8 model."""
    reports, model = root / "reports", root / "model.onnx"
    reports.mkdir(parents=True, exist_ok=True)
    model.write_bytes(b"onnx bytes")
    sha = sha256_file(model)
    fp32 = sha if served == "fp32" else "e" * 64
    write = lambda name, payload: (reports / name).write_text(json.dumps(payload))  # noqa: E731
    write("quality_filter.json", {"validation": {"success": True}})
    write("eval.json", {"ijbc": {"tar_at_far_1e-4": tar}, "verification": {"lfw": {"accuracy": accuracy}}})
    write("export.json", {"sha256": {"model.onnx": fp32}})
    write("quantize.json", {"passed": quantize_ok, "reasons": [] if quantize_ok else ["lfw accuracy drops 0.02"],
                            "serve": served if quantize_ok else "fp32",
                            "sha256": {"fp32": fp32, "int8": sha if served == "int8" else "f" * 64}})
    write("publish.json", {"infra_validation": {"passed": True}, "lineage": {"model_sha256": sha}})
    return reports


def _gate(root: Path, champion: dict[str, float] | None = None, stale: list[str] | None = None):
    return evaluate_gate(CONFIG, root / "reports", root / "model.onnx", champion, lambda: stale or [])


def test_passes_only_when_everything_holds(tmp_path: Path) -> None:
    _reports(tmp_path)
    result = _gate(tmp_path)
    assert result.passed and not result.reasons and all(result.checks.values())
    assert _gate(tmp_path, champion={"ijbc.tar_at_far_1e-4": 0.79, "verification.lfw.accuracy": 0.955}).passed
    assert "| primary_metric | pass |" in result.markdown()


@pytest.mark.parametrize("change, check, reason", [
    (dict(tar=None), "primary_metric", "missing or NaN"),
    (dict(tar=float("nan")), "primary_metric", "missing or NaN"),
    (dict(tar=0.4), "primary_metric", "below its floor 0.5"),
    (dict(accuracy=0.85), "no_regression", "verification.lfw.accuracy 0.8500 < floor 0.9000"),
    (dict(quantize_ok=False, served="int8"), "int8_accuracy", "INT8 model is served but failed"),
])
def test_each_failure_is_recorded(tmp_path: Path, change: dict, check: str, reason: str) -> None:
    _reports(tmp_path, **change)
    result = _gate(tmp_path)
    assert not result.passed and result.checks[check] is False
    assert any(r.startswith(check) and reason in r for r in result.reasons), result.reasons


def test_fp32_may_be_served_whatever_int8_did_and_a_verdict_is_required(tmp_path: Path) -> None:
    _reports(tmp_path, quantize_ok=False)  # INT8 failed its accuracy limits; the verdict serves FP32
    assert _gate(tmp_path).passed
    _reports(tmp_path, served="int8")  # INT8 within its limits and fast enough
    assert _gate(tmp_path).passed
    quantize = tmp_path / "reports" / "quantize.json"
    quantize.write_text(json.dumps({k: v for k, v in json.loads(quantize.read_text()).items() if k != "serve"}))
    result = _gate(tmp_path)
    assert not result.checks["int8_accuracy"] and "no verdict" in result.reasons[0]


def test_champion_comparison_stale_outputs_and_checksums(tmp_path: Path) -> None:
    _reports(tmp_path)
    worse = _gate(tmp_path, champion={"ijbc.tar_at_far_1e-4": 0.81, "verification.lfw.accuracy": 0.97})
    assert not worse.passed
    assert set(c for c, ok in worse.checks.items() if not ok) == {"primary_metric", "no_regression"}
    assert not _gate(tmp_path, stale=["train", "eval"]).checks["dvc_up_to_date"]
    (tmp_path / "model.onnx").write_bytes(b"a different model")  # not what was evaluated and validated
    changed = _gate(tmp_path)
    assert not changed.passed and not changed.checks["checksums"]
    (tmp_path / "reports" / "publish.json").unlink()
    assert not _gate(tmp_path).checks["infra_validation"]


def test_no_champion_and_no_floor_fails(tmp_path: Path) -> None:
    _reports(tmp_path)
    result = evaluate_gate(GateConfig(metric="ijbc.tar_at_far_1e-4"), tmp_path / "reports",
                           tmp_path / "model.onnx", None, lambda: [])
    assert not result.passed and "no floor" in result.reasons[0]


def test_lookup_handles_dotted_set_names() -> None:
    tree = {"verification": {"agedb.30": {"accuracy": 0.9}}, "x": {"flag": True}}
    assert lookup(tree, "verification.agedb.30.accuracy") == 0.9
    assert lookup(tree, "x.flag") is None and lookup(tree, "nope.a") is None


def test_gate_command(tmp_path: Path, workdir: Path) -> None:
    _reports(workdir)
    shutil.copy(Path(__file__).parents[1] / "params.yaml", workdir / "params.yaml")
    args = ["gate", "--params", str(workdir / "params.yaml"), "--set", "gate.require_dvc_up_to_date=false",
            "--set", f"publish.model={workdir / 'model.onnx'}", "--set", "gate.metric=ijbc.tar_at_far_1e-4",
            "--set", "gate.tracked=[verification.lfw.accuracy]",
            "--set", "gate.floors={ijbc.tar_at_far_1e-4: 0.5, verification.lfw.accuracy: 0.9}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads((workdir / "reports" / "gate.json").read_text())["status"] == "pass"
    (workdir / "champion.json").write_text(json.dumps({"ijbc.tar_at_far_1e-4": 0.9}))
    result = CliRunner().invoke(app, [*args, "--champion", str(workdir / "champion.json")])
    assert result.exit_code == 1 and "gate failed: primary_metric" in result.output
    verdict = json.loads((workdir / "reports" / "gate.json").read_text())
    assert verdict["status"] == "fail" and "FAIL" in (workdir / "reports" / "gate.md").read_text()
