"""Serving the approved model: the registry's ``champion`` alias decides what every serving repository serves.

:func:`serve_champion` is the one reconciliation step behind the approval watcher (a Prefect deployment on an
interval), ``faceforge promote`` and a rollback made in the MLflow UI. It reads the alias, compares it with
what each serving repository serves (the served version's manifest names its MLflow version), and only then
acts:
- the repository already serves that version: nothing, so running it every 30 s, after a restart or twice at
  once serves each alias move exactly once;
- the version is already in the repository (the alias moved back): switch the config to it, no upload;
- otherwise: download the model from MLflow, check the SHA-256 the gate evaluated, publish the next version.
A version whose gate verdict is not ``pass`` is refused unless forced with a reason; the refusal is tagged on
the version (once) and the previous champion stays served. State lives in the registry and the repositories,
never in the watcher, so a watcher that restarts simply looks again.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any

from components.io.checksums import sha256_file
from components.serving.integrity import HashCache
from components.serving.pipeline_version import PipelineSpec, pinned_embedder, serve_pair
from components.serving.repository import (
    published_version,
    read_manifest,
    rollback_target,
    served_manifest,
)
from components.serving.store import Store, open_store
from flows import tamper
from flows.lineage import registry_lineage
from flows.tracking import TAG_LIMIT, check_reachable, tracking_uri
from pipelines.params import Params
from pipelines.publish import pipeline_spec, push, serving_options

REFUSED_TAG = "serving.refused"


class PromotionRefused(RuntimeError):
    """The approved version may not be served (failed gate, no approval, checksum mismatch, missing files)."""


def serving_repositories(params: Params, chosen: list[str] | None = None) -> list[str]:
    """``--serving-repository`` (repeatable), else ``FACEFORGE_SERVING_REPOSITORY`` (comma-separated), else
    ``publish.serving_repository``: one name for one concept."""
    env = [r.strip() for r in os.environ.get("FACEFORGE_SERVING_REPOSITORY", "").split(",") if r.strip()]
    repositories = chosen or env or [r for r in [params.publish.serving_repository] if r]
    if not repositories:
        raise ValueError("no serving repository: pass --serving-repository, set FACEFORGE_SERVING_REPOSITORY or "
                         "publish.serving_repository (a folder or s3://bucket/prefix)")
    return repositories


def registry_client(params: Params) -> Any:
    """A client of the tracking server that is also the registry; MLflow's module-level calls (downloads of
    ``models:/`` URIs resolve through the *registry* URI) are pointed at the same server."""
    import mlflow

    uri = tracking_uri(params)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def champion_version(client: Any, params: Params) -> Any | None:
    """The version holding the champion alias, or None when no version holds it."""
    from mlflow.exceptions import MlflowException

    name, alias = params.mlflow.registered_model, params.mlflow.champion_alias
    try:
        aliases = client.get_registered_model(name).aliases
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    if alias not in aliases:
        return None
    try:
        version = client.get_model_version(name, aliases[alias])
    except MlflowException as exc:
        raise PromotionRefused(f"the alias {alias!r} points at {name} version {aliases[alias]}, which cannot be "
                               f"read ({exc.error_code}: deleted?); nothing was served") from exc
    if version.status != "READY":
        raise PromotionRefused(f"{name} version {version.version} is {version.status}, not READY; nothing was served")
    return version


def _refusal(version: Any, force: bool, reason: str | None) -> str | None:
    """Why this version may not be served, or None. A forced promotion is recorded on the version, so the
    watcher then serves it to the other repositories too instead of refusing it there."""
    status = version.tags.get("gate.status", "missing")
    if status == "pass" or (force and reason) or version.tags.get("promote.forced") == "true":
        return None
    return (f"version {version.version} did not pass the gate (gate.status={status}: "
            f"{version.tags.get('gate.reasons') or 'no verdict recorded'})")


def _download(version: Any, params: Params, into: Path) -> Path:
    import mlflow

    uri = f"models:/{params.mlflow.registered_model}/{version.version}"
    try:
        folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(into)))
    except Exception as exc:  # noqa: BLE001 - MLflow raises many kinds for missing artifacts or stores
        if isinstance(exc, ConnectionError):
            raise
        raise PromotionRefused(f"{uri}: the model files cannot be downloaded ({str(exc).splitlines()[0]}); "
                               "nothing was served") from exc
    model = folder / "model.onnx"
    expected = version.tags.get("model_sha256")
    actual = sha256_file(model) if model.is_file() else "missing"
    if actual != expected:
        raise PromotionRefused(f"{uri}: model.onnx SHA-256 {actual[:12]} is not the evaluated {str(expected)[:12]}; "
                               "refusing to serve a file the gate did not check")
    return model


def _serving_now(store: Store, name: str, pipeline: PipelineSpec | None) -> tuple[str | None, int | None]:
    """(MLflow version, repository version) that ``store`` serves now, from the served version's manifest; no
    MLflow version while the photo-in model is not paired with it yet (an interrupted switch: done again)."""
    manifest = served_manifest(store, name) or {}
    version = manifest.get("version")
    if pipeline is not None and version is not None and pinned_embedder(store, pipeline.name) != version:
        return None, version
    return manifest.get("lineage", {}).get("mlflow_model_version"), version


def serve_champion(params: Params, repositories: list[str] | None = None, force: bool = False,
                   reason: str | None = None, require_champion: bool = True) -> dict[str, Any]:
    """Make every serving repository serve the champion version; returns what each one did."""
    if force and not (reason and reason.strip()):
        raise ValueError("--force needs --reason: it is recorded on the model version")
    chosen = serving_repositories(params, repositories)
    client = registry_client(params)
    name, model_name = params.mlflow.registered_model, params.publish.model_name
    version = champion_version(client, params)
    if version is None:
        if require_champion:
            raise PromotionRefused(
                f"no version of {name} holds the alias {params.mlflow.champion_alias!r}: approve one in the MLflow "
                f"UI (Models -> {name} -> the version -> pencil next to Aliases -> "
                f"{params.mlflow.champion_alias!r} -> Save aliases)")
        return {"model": name, "model_version": None, "repositories": [], "action": "nothing approved yet"}

    stores = {url: open_store(url) for url in chosen}
    pipeline = pipeline_spec(params)  # the photo-in model moves with the embedder (pipeline_version.py)
    tampered = check_tampering(client, params, stores, pipeline, repair=True)
    now = {url: _serving_now(store, model_name, pipeline) for url, store in stores.items()}
    pending = {url: store for url, store in stores.items() if now[url][0] != str(version.version)}
    result: dict[str, Any] = {"model": name, "model_version": str(version.version),
                              "gate_status": version.tags.get("gate.status", "missing"),
                              "repositories": [{"repository": url, "action": "already_served",
                                                "repository_version": now[url][1]}
                                               for url in stores if url not in pending]}
    if tampered:
        result["tampered"] = tampered
    if not pending:
        return result
    refused = _refusal(version, force, reason)
    if refused:
        result["refused"] = refused
        result["newly_refused"] = REFUSED_TAG not in version.tags  # recorded once per version, not every poll
        if result["newly_refused"]:
            client.set_model_version_tag(name, version.version, REFUSED_TAG,
                                         json.dumps({"reason": refused, "at": _now()})[:TAG_LIMIT])
        if require_champion:
            raise PromotionRefused(f"{name} {refused}; refusing to serve it (the previous champion stays served). "
                                   "Override with --force --reason '...'")
        return result

    lineage = registry_lineage(client, params, version)
    options = serving_options(params.publish, lineage)
    with tempfile.TemporaryDirectory() as tmp:
        model: Path | None = None
        for url, store in pending.items():
            existing = published_version(store, model_name, lineage)
            if existing is not None:  # the alias moved back: no upload
                done = {"repository": url, "action": "switched", "repository_version": existing,
                        "pipeline_version": serve_pair(store, model_name, existing, pipeline)}
            else:
                model = model or _download(version, params, Path(tmp))
                published, pipeline_version = push(store, model_name, model, options, lineage, pipeline)
                done = {"repository": url, "action": "published", "repository_version": published,
                        "pipeline_version": pipeline_version}
            result["repositories"].append(done)
    record = {"at": _now(), "by": f"{getpass.getuser()}@{socket.gethostname()}",
              "served_versions": {r["repository"]: r.get("repository_version") for r in result["repositories"]}}
    if force and version.tags.get("gate.status") != "pass":
        record |= {"forced": True, "reason": reason}
        client.set_model_version_tag(name, version.version, "promote.forced", "true")
        client.set_model_version_tag(name, version.version, "promote.reason", reason)
    client.set_model_version_tag(name, version.version, "serving.last", json.dumps(record, sort_keys=True)[:TAG_LIMIT])
    if params.mlflow.challenger_alias in version.aliases:  # approved and served: no longer waiting for review
        result |= _retire_challenger(client, name, params.mlflow.challenger_alias)
    return result | record


def _retire_challenger(client: Any, name: str, alias: str) -> dict[str, Any]:
    """Delete the alias; on a basic-auth server the watcher's account may not (MLflow grants alias deletion
    only with MANAGE, which also manages the model's permissions: flows/accounts.py), so there the alias stays
    until the next version that passes the gate takes it."""
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code != "PERMISSION_DENIED" and "error code 403" not in str(exc):
            raise
        return {"challenger_kept": f"this account may not delete the alias {alias!r} (MLflow: MANAGE)"}
    return {}


def check_tampering(client: Any, params: Params, stores: dict[str, Store], pipeline: PipelineSpec | None,
                    repair: bool) -> list[dict[str, Any]]:
    """Served versions that differ from their manifests or the registry (flows/tamper.py): each tagged on its
    MLflow version and, with ``repair``, put back; returns one record per version found."""
    from mlflow.exceptions import MlflowException

    name, model_name = params.mlflow.registered_model, params.publish.model_name

    def registry_sha(model_version: str) -> str | None:
        try:
            return client.get_model_version(name, model_version).tags.get("model_sha256")
        except MlflowException:
            return None

    cache = HashCache.load(tamper.HASH_CACHE)
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        def download(model_version: str) -> Path:
            return _download(client.get_model_version(name, model_version), params, Path(tmp) / model_version)

        def republish(store: Store, model_version: str, model: Path) -> tuple[int, int | None]:
            lineage = registry_lineage(client, params, client.get_model_version(name, model_version))
            return push(store, model_name, model, serving_options(params.publish, lineage), lineage, pipeline)

        for store in stores.values():
            for found in tamper.check_repository(store, model_name, pipeline.name if pipeline else None, cache,
                                                 registry_sha):
                # --check (repair False): report only, change nothing, the registry included
                action = tamper.repair(store, found, model_name, pipeline, download, republish) if repair else None
                records.append(tamper.record(found, action, _now()))
                if repair and found["mlflow_model_version"]:
                    client.set_model_version_tag(name, found["mlflow_model_version"], tamper.TAMPERED_TAG,
                                                 json.dumps(records[-1], sort_keys=True)[:TAG_LIMIT])
    cache.save()
    return records


def check_served_files(params: Params, repositories: list[str] | None = None) -> list[dict[str, Any]]:
    """``faceforge promote --check``: report, change nothing."""
    stores = {url: open_store(url) for url in serving_repositories(params, repositories)}
    return check_tampering(registry_client(params), params, stores, pipeline_spec(params), repair=False)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def rollback_serving(params: Params, to: int | None = None, repository: str | None = None) -> dict[str, Any]:
    """Serve an earlier repository version; the champion alias follows when the registry knows that version,
    so the approval watcher then brings every other serving repository to the same version."""
    chosen = serving_repositories(params, [repository] if repository else None)[0]
    store = open_store(chosen)
    name = params.publish.model_name
    version = rollback_target(store, name, to)
    result: dict[str, Any] = {"repository": chosen, "model_name": name, "served_version": version,
                              "pipeline_version": serve_pair(store, name, version, pipeline_spec(params))}
    model_version = read_manifest(store, name, version).get("lineage", {}).get("mlflow_model_version")
    if model_version:
        client = registry_client(params)
        client.set_registered_model_alias(params.mlflow.registered_model, params.mlflow.champion_alias,
                                          model_version)
        result["champion"] = model_version
    return result
