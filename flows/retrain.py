"""Prefect flow ``retrain``: the DVC pipeline, an MLflow run with a registered model version, the gate.

Order matters for the faults a scheduled job meets:
1. the workspace lock (a second retrain waits or refuses, never interleaves),
2. MLflow reachability -- before any training, so compute is never spent on results that cannot be recorded,
3. one Prefect task per DVC stage; a stage that failed transiently (exit code 75) is retried, anything else
   stops the flow with earlier outputs intact (DVC writes them atomically) and the next run resumes from
   DVC's cache,
4. the gate against the registry's ``champion``, then the run, the model version and its verdict in MLflow.
Nothing is served here: ``promote`` does that after a person's approval.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.dvc_stages import StageFailed, pipeline_stages, reproduce
from flows.gate_cli import run_gate
from flows.lock import locked_workspace
from flows.record import (
    gate_tags,
    log_artifacts,
    log_dataset,
    log_metrics,
    log_params,
    model_card,
    register_model,
)
from flows.tracking import champion_metrics, check_reachable, tracking_uri
from pipelines.common import REPORTS
from pipelines.params import Params
from pipelines.publish import lineage


def _transient(task: Any, task_run: Any, state: Any) -> bool:
    """Retry only a stage that said its failure may pass; bad data or a bug fails the same way again."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, StageFailed) and error.transient


@task(task_run_name="dvc:{stage}", cache_policy=NO_CACHE)  # DVC is the cache; Prefect must not skip a stage
def run_stage(stage: str) -> bool:
    ran = reproduce(stage)
    get_run_logger().info("%s: %s", stage, "ran" if ran else "up to date, skipped")
    return ran


@task(cache_policy=NO_CACHE)
def gate(params: Params, champion: dict[str, float] | None) -> dict[str, Any]:
    return run_gate(params, champion)


@task(cache_policy=NO_CACHE)
def record_run(params: Params, run_id: str, verdict: dict[str, Any]) -> dict[str, Any]:
    """Metrics, artifacts, lineage and the registered model version (flows/record.py)."""
    metrics = log_metrics(run_id)
    tags = lineage(params, Path(params.publish.model)) | {"mlflow_run_id": run_id}
    log_dataset(params, tags["dvc_data_hash"])
    log_artifacts(params)
    mlflow.log_text(model_card(params, tags, metrics, verdict), "model_card.md")
    mlflow.set_tags(gate_tags(verdict) | {"git_revision": tags["git_revision"], "dvc_data_hash": tags["dvc_data_hash"]})
    version = register_model(params, Path(params.publish.model), tags, verdict)
    return {"metrics": metrics, "model_version": version}


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


@flow(name="retrain", log_prints=True)
def retrain(workspace: str = ".", lock_timeout_s: float | None = None) -> dict[str, Any]:
    """Rebuild what changed (DVC), record it in MLflow, register the model, run the promotion gate."""
    with locked_workspace(workspace, "retrain", lock_timeout_s) as params:
        if params.publish.target:
            raise ValueError("publish.target is set: the publish stage would serve an ungated model. Leave it null "
                             "and serve with `faceforge promote` (publish.serving_repository)")
        uri = tracking_uri(params)
        check_reachable(uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        experiment = mlflow.set_experiment(params.mlflow.experiment)
        stage_task = run_stage.with_options(retries=params.mlflow.stage_retries,
                                            retry_delay_seconds=params.mlflow.retry_delay_s,
                                            retry_condition_fn=_transient)
        with mlflow.start_run(run_name=f"retrain-{flow_run.get_name() or 'local'}") as run:
            run_id = run.info.run_id
            os.environ["MLFLOW_RUN_ID"] = run_id  # stage processes put it in the Triton config's lineage
            try:
                mlflow.set_tag("prefect.flow_run_id", str(flow_run.get_id() or ""))
                log_params(params)
                ran = {stage: stage_task(stage) for stage in pipeline_stages()}
                champion_version, champion = champion_metrics(uri, params.mlflow.registered_model,
                                                              params.mlflow.champion_alias)
                verdict = gate(params, champion)
                recorded = record_run(params, run_id, verdict)
            except BaseException:
                # Whatever the stages left (reports, Data Docs of a failed validation) helps the diagnosis.
                if REPORTS.is_dir():
                    mlflow.log_artifacts(str(REPORTS), "failure/reports")
                raise
            finally:
                os.environ.pop("MLFLOW_RUN_ID", None)
        summary = {"run_id": run_id, "experiment_id": experiment.experiment_id,
                   "model_version": recorded["model_version"], "gate": verdict["status"],
                   "reasons": verdict["reasons"], "champion_version": champion_version,
                   "stages_run": [s for s, did in ran.items() if did]}
        _publish_artifacts(params, uri, summary, verdict, champion)
        return summary
