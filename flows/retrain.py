"""Prefect flow ``retrain``: the DVC pipeline, an MLflow run with a registered model version, the gate.

Order matters for the faults a scheduled job meets:
1. the workspace lock (a second retrain waits or refuses, never interleaves),
2. MLflow reachability -- before any training, so compute is never spent on results that cannot be recorded,
3. one Prefect task per DVC stage; a stage that failed transiently (exit code 75) is retried, anything else
   stops the flow with earlier outputs intact (DVC writes them atomically) and the next run resumes from
   DVC's cache,
4. one task that runs the gate against the registry's ``champion``, pushes the outputs of a passing run to the
   DVC remote (flows/versioning.py) and records everything in MLflow, the exact ``dvc.lock`` included. It opens
   the MLflow run only now, after training, and is retried while the tracking server or the remote is
   unreachable (``orchestration.mlflow_retries``): a server that dies during training costs a wait, never the
   training, and never leaves a version without its verdict (flows/record.py).
Nothing is served here: the approval watcher does that once a person moves the ``champion`` alias.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.accounts import use_account
from flows.compatibility import measure as measure_compatibility
from flows.dvc_stages import StageFailed, needed_stages, reproduce
from flows.gate_cli import run_gate
from flows.lock import locked_workspace
from flows.record import (
    gate_tags,
    log_artifacts,
    log_dataset,
    log_metrics,
    log_model,
    log_params,
    model_card,
    register_model,
)
from flows.tracking import (
    TAG_LIMIT,
    MlflowUnavailable,
    champion_metrics,
    check_reachable,
    fail_fast,
    tracking_uri,
)
from flows.versioning import commit_run, describe_remote, lock_record
from flows.versioning import push as push_outputs
from flows.warm_start import ensure_cached, pin, plan
from pipelines.common import REPORTS
from pipelines.params import Params, load_params
from pipelines.publish import file_lineage

PARAMS_FILE = "params.yaml"  # the flow runs in the workspace (flows/lock.locked_workspace)


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only a stage that said its failure may pass; bad data or a bug fails the same way again."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, StageFailed) and error.transient


def _may_pass(task: Any, task_run: Any, state: Any) -> bool:
    """Retry the record step only while a server (MLflow, the DVC remote) does not answer; any other error is
    a bug or a refusal to see, not to wait out."""
    error = state.result(raise_on_failure=False)
    if isinstance(error, ConnectionError):  # MlflowUnavailable, RemoteUnavailable
        return True
    try:
        check_reachable(mlflow.get_tracking_uri())
    except MlflowUnavailable:
        return True
    return False


@task(task_run_name="dvc:{stage}", cache_policy=NO_CACHE)  # DVC is the cache; Prefect must not skip a stage
def run_stage(stage: str) -> bool:
    ran = reproduce(stage)
    get_run_logger().info("%s: %s", stage, "ran" if ran else "up to date, skipped")
    return ran


def _close_abandoned_runs(experiment_id: str, flow_run_id: str) -> None:
    """An earlier attempt of this flow run whose server died mid-way left its MLflow run RUNNING: mark it."""
    client = MlflowClient()
    query = f"tags.`prefect.flow_run_id` = '{flow_run_id}' and attributes.status = 'RUNNING'"
    for run in client.search_runs([experiment_id], filter_string=query):
        client.set_terminated(run.info.run_id, status="FAILED")


@task(cache_policy=NO_CACHE)
def record(params: Params, flow_run_id: str, flow_run_name: str, reason: str) -> dict[str, Any]:
    """Gate against the registry's champion, then one MLflow run: params, metrics, artifacts, the version."""
    with fail_fast(timeout_s=120):
        return _record(params, flow_run_id, flow_run_name, reason)


def _record(params: Params, flow_run_id: str, flow_run_name: str, reason: str) -> dict[str, Any]:
    uri = tracking_uri(params)
    check_reachable(uri)
    experiment = mlflow.set_experiment(params.mlflow.experiment)
    _close_abandoned_runs(experiment.experiment_id, flow_run_id)
    champion_version, champion = champion_metrics(uri, params.mlflow.registered_model, params.mlflow.champion_alias)
    verdict = run_gate(params, champion)
    # a fact for the gallery's migration, not a check: docs/gallery.md, "Compatibility"
    verdict["compatibility"] = measure_compatibility(params, mlflow.MlflowClient(), champion_version)
    lock_text, lock_sha = lock_record()
    # A version that may be approved must be rebuildable elsewhere: its outputs go to the DVC remote, and what
    # git must hold (dvc.lock, metrics, params) to a commit of its own on faceforge/runs/<flow run>.
    pushed = push_outputs() if verdict["passed"] else None
    commit = commit_run(Path("."), f"faceforge/runs/{flow_run_name}",
                        f"faceforge retrain {flow_run_name}: dvc.lock, metrics, params") if pushed else None
    lineage = replace(file_lineage(params, Path(params.publish.model)), prefect_flow_run_id=flow_run_id or None,
                      gate_status=verdict["status"], gate_reasons=tuple(verdict["reasons"]), dvc_lock_sha256=lock_sha,
                      dvc_remote=describe_remote(pushed["url"]) if pushed else None, dvc_commit=commit)
    with mlflow.start_run(run_name=f"retrain-{flow_run_name}") as run:
        mlflow.set_tags({"prefect.flow_run_id": flow_run_id, "retrain.reason": reason[:TAG_LIMIT]})
        log_params(params)
        # The model before the metrics, which are then linked to it in log_metrics' batched calls (log_model).
        logged = log_model(Path(params.publish.model), lineage)
        metrics = log_metrics(run.info.run_id, logged.model_id)
        log_dataset(params, lineage.dvc_data_hash)
        log_artifacts(params)
        mlflow.log_text(model_card(params, lineage, metrics, verdict), "model_card.md")
        mlflow.log_text(lock_text, "dvc/dvc.lock")
        mlflow.set_tags(gate_tags(verdict) | {"git_revision": lineage.git_revision,
                                              "dvc_data_hash": lineage.dvc_data_hash, "dvc_lock_sha256": lock_sha})
        version = register_model(params, Path(params.publish.model), lineage, verdict, logged)
    return {"run_id": run.info.run_id, "experiment_id": experiment.experiment_id, "model_version": version,
            "verdict": verdict, "champion_version": champion_version, "champion": champion}


def record_failure(params: Params, flow_run_id: str, stage: str, error: BaseException) -> None:
    """A failed retrain is visible in MLflow too (a FAILED run with the reports the stages left), when the
    server answers; otherwise the flow's own failure is the record."""
    try:
        check_reachable(tracking_uri(params))
    except MlflowUnavailable:
        return
    mlflow.set_experiment(params.mlflow.experiment)
    with mlflow.start_run(run_name=f"retrain-failed-{stage}") as run:
        mlflow.set_tags({"prefect.flow_run_id": flow_run_id, "failure.stage": stage,
                         "failure.reason": str(error)[:TAG_LIMIT]})
        log_params(params)
        if REPORTS.is_dir():
            mlflow.log_artifacts(str(REPORTS), "failure/reports")
    MlflowClient().set_terminated(run.info.run_id, status="FAILED")


def _links(uri: str, experiment_id: str, run_id: str, model: str, version: str) -> dict[str, str]:
    base = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"
    return {"run": f"{base}/#/experiments/{experiment_id}/runs/{run_id}",
            "model version": f"{base}/#/models/{model}/versions/{version}"}


def _publish_artifacts(params: Params, uri: str, summary: dict[str, Any], verdict: dict[str, Any],
                       champion: dict[str, float] | None) -> None:
    rows = [{"metric": name, "candidate": value, "champion": (champion or {}).get(name)}
            for name, value in verdict["metrics"].items()]
    create_table_artifact(key="faceforge-gate-metrics", table=rows,
                          description=f"Gate metrics vs the champion ({summary['champion_version'] or 'none'})")
    links = _links(uri, summary["experiment_id"], summary["run_id"], params.mlflow.registered_model,
                   summary["model_version"])
    opening = "" if uri.startswith("http") else (
        f"\nTracking is local (`{uri}`): start the UI with `uv run mlflow ui --backend-store-uri {uri}`.\n")
    lines = [(REPORTS / "gate.md").read_text(), opening, *[f"- [{k}]({v})" for k, v in links.items()]]
    create_markdown_artifact(key="faceforge-retrain", markdown="\n".join(lines),
                             description=f"{params.mlflow.registered_model} v{summary['model_version']}")
    if uri.startswith("http"):
        create_link_artifact(key="faceforge-mlflow-run", link=links["run"], link_text="MLflow run")


@task(cache_policy=NO_CACHE)
def choose_start(params: Params, full_retrain: bool) -> Params:
    """Warm from the champion or full from train.init_from (flows/warm_start.py), pinned into params.yaml before
    DVC runs; returns the params as the stages will read them."""
    with fail_fast(timeout_s=120):
        start = plan(MlflowClient(), params, full_retrain)
    ensure_cached(start)
    pin(Path(PARAMS_FILE), start)
    get_run_logger().info("start: %s", "warm, " + start.reason if start.version else
                          f"train.init_from ({start.reason})")
    return load_params(PARAMS_FILE)


@flow(name="retrain", log_prints=True)
def retrain(workspace: str = ".", lock_timeout_s: float | None = None, full: bool = False,
            reason: str = "schedule") -> dict[str, Any]:
    """Rebuild what changed (DVC), run the promotion gate, record the run and register the model in MLflow.
    ``full`` starts from train.init_from even when the champion could be continued (a warm retrain).
    ``reason``: why it runs (the schedule, a person, or the drift check's finding: flows/drift.py); the MLflow
    run's ``retrain.reason`` tag keeps it."""
    use_account("retrain")  # team mode: its own MLflow account (flows/accounts.py)
    with locked_workspace(workspace, "retrain", lock_timeout_s) as params:
        uri = tracking_uri(params)
        try:
            check_reachable(uri)
        except MlflowUnavailable as exc:
            raise MlflowUnavailable(f"{exc}; no training was started") from exc
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        params = choose_start(params, full)
        o = params.orchestration
        stage_task = run_stage.with_options(retries=o.stage_retries, retry_delay_seconds=o.retry_delay_s,
                                            retry_condition_fn=_transient)
        flow_run_id = str(flow_run.get_id() or "")
        ran: dict[str, bool] = {}
        for stage in needed_stages():
            try:
                ran[stage] = stage_task(stage)
            except StageFailed as exc:
                record_failure(params, flow_run_id, stage, exc)
                raise
        record_task = record.with_options(retries=o.mlflow_retries, retry_delay_seconds=o.retry_delay_s,
                                          retry_condition_fn=_may_pass)
        get_run_logger().info("retrain: %s", reason)
        recorded = record_task(params, flow_run_id, flow_run.get_name() or "local", reason)
        verdict = recorded["verdict"]
        summary = {"run_id": recorded["run_id"], "experiment_id": recorded["experiment_id"],
                   "model_version": recorded["model_version"], "gate": verdict["status"],
                   "reasons": verdict["reasons"], "champion_version": recorded["champion_version"], "reason": reason,
                   "stages_run": [s for s, did in ran.items() if did]}
        _publish_artifacts(params, uri, summary, verdict, recorded["champion"])
        return summary
