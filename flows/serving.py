"""The two sides a promotion works between: the MLflow registry (the champion, its files) and the serving
repositories (which ones, whether their files are intact, rolling back).

The promotion itself, plan -> check -> re-embed -> publish -> switch, is flows/promotion.py; this module is what
it and ``faceforge promote --check``, ``faceforge rollback`` and ``faceforge lineage`` share.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from components.io.checksums import sha256_file
from components.serving.integrity import HashCache
from components.serving.pipeline_version import PipelineSpec
from components.serving.served_pair import ServedPair
from components.serving.store import Store, open_store
from flows import tamper
from flows.lineage import registry_lineage
from flows.tracking import TAG_LIMIT, check_reachable, tracking_uri
from pipelines.params import Params
from pipelines.publish import pipeline_spec, push, serving_options


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


def download_model(version: Any, params: Params, into: Path) -> Path:
    """The version's ``model.onnx`` from MLflow, refused unless its SHA-256 is the one the gate evaluated."""
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
            return download_model(client.get_model_version(name, model_version), params, Path(tmp) / model_version)

        def republish(store: Store, model_version: str, model: Path) -> tuple[int, int | None]:
            lineage = registry_lineage(client, params, client.get_model_version(name, model_version))
            return push(store, model_name, model, serving_options(params.publish, lineage), lineage, pipeline)

        for store in stores.values():
            for found in tamper.check_repository(store, model_name, pipeline.name if pipeline else None, cache,
                                                 registry_sha):
                # --check (repair False): report only, change nothing, the registry included
                action = tamper.repair(store, found, model_name, pipeline, download, republish) if repair else None
                records.append(tamper.record(found, action, now()))
                if repair and found["mlflow_model_version"]:
                    client.set_model_version_tag(name, found["mlflow_model_version"], tamper.TAMPERED_TAG,
                                                 json.dumps(records[-1], sort_keys=True)[:TAG_LIMIT])
    cache.save()
    return records


def check_served_files(params: Params, repositories: list[str] | None = None) -> list[dict[str, Any]]:
    """``faceforge promote --check``: report, change nothing."""
    stores = {url: open_store(url) for url in serving_repositories(params, repositories)}
    return check_tampering(registry_client(params), params, stores, pipeline_spec(params), repair=False)


def now() -> str:
    """A timestamp for records on model versions: local time with its offset."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def rollback_serving(params: Params, to: int | None = None, repository: str | None = None) -> dict[str, Any]:
    """Serve an earlier repository version; the champion alias follows when the registry knows that version,
    so the approval watcher then brings every other serving repository to the same version. A gallery gets
    the version's templates back first (kept, or re-embedded from the repository's own model file)."""
    from flows.gallery import gallery_in_use, prepare_repository_version  # the gallery's libraries: rollback only

    chosen = serving_repositories(params, [repository] if repository else None)[0]
    pair = ServedPair(open_store(chosen), params.publish.model_name, pipeline_spec(params))
    version = pair.earlier(to)
    gallery = gallery_in_use(params) if pair.pipeline is not None else None
    result: dict[str, Any] = {"repository": chosen, "model_name": pair.embedder, "served_version": version}
    if gallery is not None:
        model, result["gallery"] = prepare_repository_version(gallery, pair, version, params.gallery.reembed_batch)
    result["pipeline_version"] = pair.switch(version)
    if gallery is not None:
        result["gallery"] |= gallery.activate(model)
    model_version = pair.model(version)[1]
    if model_version:
        client = registry_client(params)
        client.set_registered_model_alias(params.mlflow.registered_model, params.mlflow.champion_alias,
                                          model_version)
        result["champion"] = model_version
    return result
