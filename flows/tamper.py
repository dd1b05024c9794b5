"""Tamper evidence for what is served, and its repair (docs/serving.md, "Tamper evidence").

Every poll of the approval watcher (and every ``faceforge promote``) checks each served version of the
embedder and of the photo-in model in every serving repository: its files against its manifest's checksums
(components/serving/integrity.py), and for the embedder, the manifest's ``model.onnx`` checksum against the
registry's ``model_sha256`` of the MLflow version it names. What differs is reported (a ``serving.tampered``
tag on that MLflow version, a Prefect artifact from the flow, ``faceforge promote --check`` exits non-zero)
and repaired: a changed or missing file is put back from its source when one has the manifest's checksum
(the model from MLflow, verified against the registry; the code and detector from this installation), a file
the manifest does not list is deleted; a version that cannot be put back byte for byte is published again
from MLflow as a new version, which is then served.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.io.checksums import sha256_file
from components.serving.integrity import HashCache, VersionCheck, check_served
from components.serving.pipeline_version import PipelineSpec, pinned_embedder, pipeline_files, serve_pipeline
from components.serving.repository import PYTHON_MODEL, served
from components.serving.store import Store

TAMPERED_TAG = "serving.tampered"
HASH_CACHE = Path(".faceforge") / "served-hashes.json"


def registry_problems(check: VersionCheck, registry_sha: Callable[[str], str | None]) -> list[str]:
    """The embedder's manifest against the registry: the model the gate evaluated is the one served."""
    if check.manifest is None:
        return []
    mlflow_version = check.manifest.get("lineage", {}).get("mlflow_model_version")
    served_sha = check.manifest.get("sha256", {}).get("model.onnx")
    if not mlflow_version:
        return []  # published by the publish stage or by hand, never registered: nothing to compare with
    expected = registry_sha(str(mlflow_version))
    if expected != served_sha:
        return [f"{check.model}/{check.version}/faceforge.json: model.onnx SHA-256 {str(served_sha)[:12]} is not "
                f"the registry's model_sha256 {str(expected)[:12]} of MLflow version {mlflow_version}"]
    return []


def check_repository(store: Store, embedder: str, pipeline: str | None, cache: HashCache,
                     registry_sha: Callable[[str], str | None]) -> list[dict[str, Any]]:
    """Every served version that differs from its manifest or from the registry, with its problems."""
    found = []
    for check in check_served(store, [embedder, *([pipeline] if pipeline else [])], cache):
        registry = registry_problems(check, registry_sha) if check.model == embedder else []
        if registry or not check.intact:
            found.append({"repository": store.url, "model": check.model, "version": check.version,
                          "mlflow_model_version": (check.manifest or {}).get("lineage", {}).get(
                              "mlflow_model_version"),
                          "problems": check.problems() + registry, "registry_mismatch": bool(registry),
                          "check": check})
    return found


def _put_back(store: Store, check: VersionCheck, sources: dict[str, Path]) -> bool:
    """Restore changed and missing files from ``sources`` (by checksum), delete unexpected ones. False when
    some file has no source with the manifest's checksum (then nothing is changed), or when a restored file
    does not read back with it (the caller then publishes the version again)."""
    wanted = check.changed | check.missing
    if any(sha not in sources for sha in wanted.values()):
        return False
    for key, sha in wanted.items():
        store.upload(key, sources[sha])
        if store.sha256(key) != sha:
            return False
    for key in check.unexpected:
        store.delete(key)
    return True


def repair(store: Store, found: dict[str, Any], embedder: str, spec: PipelineSpec | None,
           download: Callable[[str], Path], republish: Callable[[Store, str, Path], tuple[int, int | None]]) -> str:
    """Put one tampered version back; returns what was done ("restored" or "republished as N")."""
    check: VersionCheck = found["check"]
    with tempfile.TemporaryDirectory() as tmp:
        sources: dict[str, Path] = {}
        if check.model == embedder:
            model = download(found["mlflow_model_version"]) if found["mlflow_model_version"] else None
            for path in [p for p in (model, PYTHON_MODEL) if p is not None]:
                sources[sha256_file(path)] = path
            if check.manifest is not None and not found["registry_mismatch"] and _put_back(store, check, sources):
                return "restored"
            if model is None:
                raise RuntimeError(f"{store.url}/{embedder}/{check.version} differs from its manifest and names no "
                                   f"MLflow version to restore it from: {found['problems']}")
            version, _ = republish(store, found["mlflow_model_version"], model)
            return f"republished as version {version}"
        assert spec is not None
        pinned = pinned_embedder(store, spec.name) if check.manifest is not None else None
        if pinned is not None:
            sources = {sha256_file(p): p for p in pipeline_files(store, spec, embedder, pinned, Path(tmp)).values()}
            if _put_back(store, check, sources):
                return "restored"
        # this installation builds different files (or the manifest is gone): a new pipeline version for the
        # embedder version served now
        served_embedder = pinned if pinned is not None else max(served(store, embedder))
        return f"republished as version {serve_pipeline(store, spec, embedder, served_embedder)}"


def record(found: dict[str, Any], action: str | None, at: str) -> dict[str, Any]:
    """What is reported and tagged: where, which version, what differed, what was done."""
    return {"repository": found["repository"], "model": found["model"], "version": found["version"],
            "problems": found["problems"], "action": action, "at": at}
