"""Prefect flow ``drift``: the served model's live traffic against its version's reference, on a schedule.

Each run takes the last ``monitoring.window_minutes`` of what the photo-in model captured (components/monitoring/
capture.py), per served version; reads that version's reference from its MLflow run (``eval/reference.npz``, kept
by the eval stage); tests the window against it (components/monitoring/drift.py); writes the report (JSON and a
plot) to an MLflow run of its own, in ``<mlflow.experiment>-monitoring``, and as a Prefect artifact; and, past
the set level (a drifted window), starts the ``retrain`` deployment with the finding as its ``reason``: an event
next to the timer. Serving does not change here: the gate and a person's approval still decide what is served.
Captured chunks older than ``monitoring.capture_retention_days`` are deleted first.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from components.monitoring.capture import Window, expire, read_window, versions
from components.monitoring.drift import DriftSettings, compare, plot
from components.monitoring.reference import Reference
from flows.accounts import use_account
from flows.lock import in_workspace
from flows.tracking import tracking_uri
from pipelines.params import Params, load_params

RETRAIN_DEPLOYMENT = "retrain/scheduled"


def capture_root(params: Params) -> Path:
    """``FACEFORGE_CAPTURE`` (where a team's Triton writes it) wins over ``monitoring.capture``."""
    return Path(os.environ.get("FACEFORGE_CAPTURE") or params.monitoring.capture)


def reference_of(params: Params, version: str) -> Reference | None:
    """The reference the eval stage kept for registered ``version`` (None: not a registered version, or
    evaluated before references were kept)."""
    if not version.isdigit():
        return None
    run_id = MlflowClient().get_model_version(params.mlflow.registered_model, version).run_id
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="eval/reference.npz",
                                                       dst_path=tmp)
        except (OSError, MlflowException):  # no such artifact: evaluated before references were kept
            return None
        return Reference.load(Path(path))


def settings(params: Params) -> DriftSettings:
    m = params.monitoring
    return DriftSettings(m.alpha, m.min_faces, m.min_effect, m.permutations)


Check = tuple[dict[str, Any], Reference | None, Window]


def check_window(params: Params, version: str, since: float, until: float) -> Check:
    """One version's window against its reference: (the verdict with its reasons and tests, the reference,
    the window)."""
    window = read_window(capture_root(params), version, since, until)
    if not window.photos:  # a version no longer served (its capture kept for the retention): nothing to fetch
        return {"window": window.summary(), "verdict": "no_traffic", "reasons": []}, None, window
    reference = reference_of(params, version)
    if reference is None:
        return ({"window": window.summary(), "verdict": "no_reference",
                 "reasons": [f"version {version} has no drift reference (eval/reference.npz) in MLflow"]},
                None, window)
    return compare(reference, window, settings(params)), reference, window


def write_report(checks: list[Check], out: Path) -> None:
    """``drift_v<N>.json`` per version, and its plot: each measure and the scores, reference against live."""
    for result, reference, window in checks:
        (out / f"drift_v{window.version}.json").write_text(json.dumps(result, indent=2))
        if reference is not None and window.faces >= 2:
            plot(reference, window, result, out / f"drift_v{window.version}.png")


def record(params: Params, results: list[dict[str, Any]], out: Path) -> str:
    """One MLflow run per check: each version's verdict as a tag, p-values as metrics, the report's files."""
    mlflow.set_experiment(f"{params.mlflow.experiment}-monitoring")
    with mlflow.start_run(run_name="drift") as run:
        for result in results:
            version = result["window"]["version"]
            mlflow.set_tag(f"drift.v{version}", result["verdict"])
            for test in result.get("tests", []):
                mlflow.log_metric(f"v{version}.{test['signal']}.p_value", test["p_value"])
                mlflow.log_metric(f"v{version}.{test['signal']}.statistic", test["statistic"])
        mlflow.log_artifacts(str(out), "drift")
    return run.info.run_id


def markdown(results: list[dict[str, Any]], run_id: str | None) -> str:
    lines = ["# Drift check", "", f"MLflow run: `{run_id}` (plots under `drift/`)", "",
             "| version | photos | faces | verdict | reasons |", "|---|---|---|---|---|"]
    for r in results:
        w = r["window"]
        lines.append(f"| {w['version']} | {w['photos']} | {w['faces']} | {r['verdict']} | "
                     f"{'; '.join(r['reasons']) or '-'} |")
    return "\n".join(lines)


def start_retrain(workspace: str, reason: str) -> str | None:
    """The retrain deployment's next run, now, with ``reason``; its id (None where no such deployment is
    served: `faceforge drift` without `faceforge serve-flows` or a team's worker)."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    try:
        run = run_deployment(RETRAIN_DEPLOYMENT, parameters={"workspace": workspace, "reason": reason},
                             timeout=0, tags=["drift"])
    except ObjectNotFound:
        return None
    return str(run.id)


@flow(name="drift", log_prints=True)
def drift(workspace: str = ".", until: float | None = None) -> dict[str, Any]:
    """Compare the last window of live traffic with each served version's reference; start a retrain when
    one drifted. ``until``: the window's end (default now)."""
    use_account("retrain")  # team mode: it logs runs and starts the retrain (flows/accounts.py)
    logger = get_run_logger()
    with in_workspace(workspace):
        params = load_params("params.yaml")
        m = params.monitoring
        end = time.time() if until is None else until
        since = end - m.window_minutes * 60
        root = capture_root(params)
        expired = expire(root, end - m.capture_retention_days * 86400)
        uri = tracking_uri(params)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            checks = [c for c in (check_window(params, v, since, end) for v in versions(root))
                      if c[2].photos]  # the versions that served in the window
            write_report(checks, out)
            results = [c[0] for c in checks]
            run_id = record(params, results, out) if results else None
        create_markdown_artifact(markdown(results, run_id), key="faceforge-drift", description="drift check")
        drifted = [r for r in results if r["verdict"] == "drift"]
        summary: dict[str, Any] = {"since": since, "until": end, "expired_chunks": expired, "mlflow_run_id": run_id,
                                   "verdicts": {r["window"]["version"]: r["verdict"] for r in results},
                                   "retrain_flow_run_id": None}
        if drifted and m.retrain_on_drift:
            reason = "drift: " + "; ".join(f"version {r['window']['version']}: {', '.join(r['reasons'])}"
                                           for r in drifted)
            summary["retrain_flow_run_id"] = start_retrain(str(Path(workspace).resolve()), reason)
            summary["reason"] = reason
            if summary["retrain_flow_run_id"] is None:
                logger.warning("drift found (%s), but no %s deployment is served: start one with `faceforge "
                               "retrain` or serve the flows (`faceforge serve-flows`)", reason, RETRAIN_DEPLOYMENT)
            else:
                logger.warning("drift found, retrain started (%s): %s", summary["retrain_flow_run_id"], reason)
        else:
            logger.info("drift check: %s", summary["verdicts"] or "no traffic in the window")
        return summary
