"""[F] Orchestration parts, each against the real thing: DVC stages through its Python API, Prefect retries on
a real (temporary) Prefect API, MLflow on SQLite, the workspace lock with a second process."""

from __future__ import annotations

import multiprocessing
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from components.io.nested import flatten, numeric
from flows.dvc_stages import TRANSIENT_EXIT, StageFailed, pipeline_stages, reproduce, stale_stages
from flows.lock import WorkspaceBusy, exclusive
from flows.tracking import MlflowUnavailable, check_reachable, training_curve
from pipelines.params import PublishParams, load_params

REPO = Path(__file__).parents[1]


def _dvc_project(root: Path, stages: dict[str, dict]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    return root


def _fails_once(marker: Path, out: str) -> str:
    """A stage command that exits 75 (transient) on its first run, then succeeds and writes ``out``."""
    return (f"{sys.executable} -c \"import pathlib, sys; p = pathlib.Path(r'{marker}'); n = int(p.read_text()) "
            f"if p.exists() else 0; p.write_text(str(n + 1)); sys.exit({TRANSIENT_EXIT} if n == 0 else 0)\" "
            f"&& echo ok > {out}")


def test_pipeline_order_and_publish_params_exclude_serving_repository() -> None:
    assert pipeline_stages(REPO) == ["detect", "align", "quality_filter", "pack", "import_model", "warm_start",
                                     "train", "export", "eval", "quantize", "publish"]
    declared = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["publish"]["params"])
    # Every publish key the stage reads reruns it; only promote's serving_repository may change freely.
    assert {k for k in declared if k.startswith("publish.")} == {
        f"publish.{k}" for k in PublishParams.model_fields} - {"publish.serving_repository"}
    # the photo-in model runs the detect and align settings: changing one rebuilds the candidate
    assert {"detect.model_path", "detect.input_size", "detect.score_threshold", "detect.centre_weight",
            "align.image_size"} <= declared


def test_reproduce_runs_skips_and_classifies_failures(tmp_path: Path) -> None:
    root = _dvc_project(tmp_path / "p", {
        "make": {"cmd": "echo hello > a.txt", "outs": ["a.txt"]},
        "broken": {"cmd": "exit 3", "deps": ["a.txt"], "outs": ["b.txt"]},
        "flaky": {"cmd": _fails_once(tmp_path / "attempts", "flaky.txt"), "deps": ["a.txt"], "outs": ["flaky.txt"]},
    })
    assert reproduce("make", root) is True
    assert reproduce("make", root) is False  # unchanged: skipped, as `dvc repro` would
    with pytest.raises(StageFailed) as failed:
        reproduce("broken", root)
    assert failed.value.exit_code == 3 and not failed.value.transient and "'broken'" in str(failed.value)
    assert (root / "a.txt").read_text() == "hello\n"  # the earlier stage's output is intact
    with pytest.raises(StageFailed) as failed:
        reproduce("flaky", root)
    assert failed.value.transient
    assert "broken" in stale_stages(root)


def test_transient_stage_failure_is_retried_by_prefect(tmp_path: Path, prefect_api: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect import flow

    from flows.retrain import _transient, run_stage

    marker = tmp_path / "attempts"
    root = _dvc_project(tmp_path / "p", {"flaky": {"cmd": _fails_once(marker, "out.txt"), "outs": ["out.txt"]},
                                         "bad": {"cmd": "exit 1", "outs": ["bad.txt"]}})

    @flow
    def run(stage: str) -> bool:
        return run_stage.with_options(retries=2, retry_delay_seconds=0, retry_condition_fn=_transient)(stage)

    monkeypatch.chdir(root)
    assert run("flaky") is True and marker.read_text() == "2"  # failed once (exit 75), retried, passed
    with pytest.raises(StageFailed, match="'bad'"):
        run("bad")  # exit 1 is not transient: no retry


def _hold(lock_file: str, ready: multiprocessing.synchronize.Event, release: multiprocessing.synchronize.Event) -> None:
    with exclusive(Path(lock_file), 0, "retrain"):
        ready.set()
        release.wait(30)


def test_second_run_waits_then_refuses(tmp_path: Path) -> None:
    lock_file = tmp_path / ".faceforge" / "retrain.lock"
    ctx = multiprocessing.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(lock_file), ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(WorkspaceBusy, match=r"retrain pid \d+"), exclusive(lock_file, 0.5, "promote"):
            pass
    finally:
        release.set()
        holder.join(30)
    with exclusive(lock_file, 5, "retrain"):  # released by the first holder: the next run proceeds
        pass


def test_unreachable_mlflow_names_the_uri() -> None:
    from components.serving.triton_server import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(MlflowUnavailable, match=f"MLflow at {uri} is unreachable"):
        check_reachable(uri)


def test_retrain_fails_before_any_stage_when_mlflow_is_down(tmp_path: Path, prefect_api: None,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    from components.serving.triton_server import free_port
    from flows.retrain import retrain

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    _dvc_project(tmp_path, {"never": {"cmd": "echo ran > ran.txt", "outs": ["ran.txt"]}})
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with pytest.raises(MlflowUnavailable, match=uri):
        retrain(workspace=str(tmp_path))
    assert not (tmp_path / "ran.txt").exists()
    assert issubclass(MlflowUnavailable, ConnectionError)  # the CLI exits 75: worth retrying


def test_report_flattening_and_training_curve(tmp_path: Path) -> None:
    report = {"ijbc": {"tar_at_far_1e-4": 0.5, "tar_at_far_1e-6": None, "identification": {"mean": {"rank1": 1}}},
              "passed": True, "model": "data/train", "nan": float("nan")}
    assert numeric(report, "eval") == {"eval.ijbc.tar_at_far_1e-4": 0.5, "eval.ijbc.identification.mean.rank1": 1.0}
    assert flatten({"a": {"b": [1, 2]}}) == {"a.b": [1, 2]}
    (tmp_path / "curve.csv").write_text("step,epoch,loss,lr,samples_per_s\n2,0,3.5,0.1,9.0\n4,0,3.0,0.05,10.0\n")
    assert training_curve(tmp_path / "curve.csv")[1] == (4, {"train.loss": 3.0, "train.lr": 0.05,
                                                            "train.samples_per_s": 10.0})


def test_mlflow_and_orchestration_params_are_validated(tmp_path: Path) -> None:
    from pipelines.params import ParamsError

    (tmp_path / "p.yaml").write_text("orchestration:\n  lock_timeout_s: -1\n")
    with pytest.raises(ParamsError, match="orchestration.lock_timeout_s"):
        load_params(tmp_path / "p.yaml")
    (tmp_path / "p.yaml").write_text("mlflow:\n  lock_timeout_s: 5\n")  # moved to orchestration:
    with pytest.raises(ParamsError, match="mlflow.lock_timeout_s: unknown key"):
        load_params(tmp_path / "p.yaml")
    (tmp_path / "p.yaml").write_text("mlflow:\n  trackng_uri: x\n")
    with pytest.raises(ParamsError, match="mlflow.trackng_uri: unknown key"):
        load_params(tmp_path / "p.yaml")
