"""Serving the approved model: ``promote`` (the ``champion`` version -> serving repository) and ``rollback``.

The registry decides what is served. ``promote`` publishes exactly the model version that holds the champion
alias, after checking that its bytes are the ones the gate evaluated; a version that failed the gate is refused
unless forced, and the reason is recorded on the version. ``rollback`` serves an earlier repository version and
moves the champion alias back with it, so a later ``promote`` does not bring the bad model back.
"""

from __future__ import annotations

import getpass
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from components.io.raw_folder import sha256_file
from components.serving.repository import read_manifest, rollback, served
from components.serving.store import open_store
from flows.record import TAG_LIMIT
from flows.tracking import check_reachable, tracking_uri
from pipelines.params import Params
from pipelines.publish import push, serving_options


class PromotionRefused(RuntimeError):
    """The approved version may not be served (failed gate, no approval, checksum mismatch)."""


def serving_targets(params: Params, targets: list[str] | None) -> list[str]:
    chosen = targets or [os.environ.get("FACEFORGE_SERVING_REPOSITORY") or params.publish.serving_repository]
    chosen = [t for t in chosen if t]
    if not chosen:
        raise ValueError("no serving repository: pass --target, set publish.serving_repository or "
                         "FACEFORGE_SERVING_REPOSITORY (a folder or s3://bucket/prefix)")
    return chosen


def _client(params: Params) -> Any:
    from mlflow import MlflowClient

    uri = tracking_uri(params)
    check_reachable(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def approved_version(client: Any, params: Params) -> Any:
    from mlflow.exceptions import MlflowException

    name, alias = params.mlflow.registered_model, params.mlflow.champion_alias
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        raise PromotionRefused(
            f"no version of {name} holds the alias {alias!r}: approve one in the MLflow UI (Models -> {name} -> "
            f"the version -> pencil next to Aliases -> {alias!r} -> Save aliases)") from exc


def _download(version: Any, params: Params, into: Path) -> Path:
    import mlflow

    uri = f"models:/{params.mlflow.registered_model}/{version.version}"
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into),
                                                      tracking_uri=tracking_uri(params)))
    model = folder / "model.onnx"
    expected = version.tags.get("model_sha256")
    actual = sha256_file(model) if model.is_file() else "missing"
    if actual != expected:
        raise PromotionRefused(f"{uri}: model.onnx SHA-256 {actual[:12]} is not the evaluated {str(expected)[:12]}; "
                               "refusing to serve a file the gate did not check")
    return model


def _already_served(target: str, name: str, sha256: str) -> int | None:
    store = open_store(target)
    for version in served(store, name):
        if read_manifest(store, name, version).get("sha256", {}).get("model.onnx") == sha256:
            return version
    return None


def promote(params: Params, targets: list[str] | None = None, force: bool = False,
            reason: str | None = None) -> dict[str, Any]:
    """Publish the champion version to every target; returns what each target now serves."""
    if force and not (reason and reason.strip()):
        raise ValueError("--force needs --reason: it is recorded on the model version")
    chosen = serving_targets(params, targets)
    client = _client(params)
    name = params.mlflow.registered_model
    version = approved_version(client, params)
    status = version.tags.get("gate.status", "missing")
    if status != "pass" and not force:
        raise PromotionRefused(f"{name} version {version.version} did not pass the gate (gate.status={status}: "
                               f"{version.tags.get('gate.reasons', 'no verdict recorded')}); refusing to serve it. "
                               "Override with --force --reason '...'")
    lineage = {"git_revision": version.tags.get("git_revision", "unknown"),
               "dvc_data_hash": version.tags.get("dvc_data_hash", "unknown"),
               "mlflow_run_id": version.run_id, "mlflow_model_version": str(version.version),
               "model_sha256": version.tags.get("model_sha256", "")}
    metrics = {k: v for k, v in client.get_run(version.run_id).data.metrics.items() if k.startswith("eval.")}
    lineage["metrics"] = json.dumps(metrics, sort_keys=True)
    options = serving_options(params.publish, lineage)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        model = _download(version, params, Path(tmp))
        for target in chosen:
            existing = _already_served(target, params.publish.model_name, lineage["model_sha256"])
            if existing is not None:  # promote is idempotent: the schedule may fire again with the same champion
                results.append({"target": target, "model_name": params.publish.model_name, "version": existing,
                                "already_served": True})
                continue
            results.append(push(target, params.publish.model_name, model, options, {"lineage": lineage}))
    record = {"targets": results, "at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "by": getpass.getuser()}
    if force and status != "pass":
        record |= {"forced": True, "reason": reason}
        client.set_model_version_tag(name, version.version, "promote.forced", "true")
        client.set_model_version_tag(name, version.version, "promote.reason", reason)
    client.set_model_version_tag(name, version.version, "promote.last", json.dumps(record, sort_keys=True)[:TAG_LIMIT])
    if params.mlflow.challenger_alias in version.aliases:  # approved and served: no longer waiting for review
        client.delete_registered_model_alias(name, params.mlflow.challenger_alias)
    return {"model": name, "model_version": str(version.version), "gate_status": status, **record}


def rollback_serving(params: Params, to: int | None = None, target: str | None = None) -> dict[str, Any]:
    """Serve an earlier repository version; the champion alias follows when the registry knows that version."""
    chosen = serving_targets(params, [target] if target else None)[0]
    store = open_store(chosen)
    name = params.publish.model_name
    version = rollback(store, name, to)
    result: dict[str, Any] = {"target": chosen, "model_name": name, "served_version": version}
    model_version = read_manifest(store, name, version).get("lineage", {}).get("mlflow_model_version")
    if model_version:
        client = _client(params)
        client.set_registered_model_alias(params.mlflow.registered_model, params.mlflow.champion_alias,
                                          model_version)
        result["champion"] = model_version
    return result
