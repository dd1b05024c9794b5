"""Publishing versions into a Triton model repository, and switching the served one.

Layout: ``<model>/config.pbtxt`` and ``<model>/<version>/{model.onnx, model.py?, faceforge.json}``.
- Versions only grow; an existing version folder is never written to.
- A version is published in four steps: claim its number with a conditional write (``faceforge.claim``: two
  publishers, even on two machines, never share a number), upload its files, verify each stored object's
  SHA-256 against the local file, write ``faceforge.json`` (checksums + lineage; its presence marks the version
  complete). Only then is ``config.pbtxt`` rewritten to serve it: Triton (``version_policy: specific``) never
  sees a half-uploaded version. Any failure deletes the partial version, leaving the repository as it was.
- Serving an existing version again (rollback, or the registry's champion moved back) rewrites only the
  config: the one that version was published with (kept in its manifest), its version policy and lineage
  parameters from that manifest. Nothing is deleted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.io.checksums import sha256_file
from components.serving.lineage import Lineage
from components.serving.store import Store, StoreError
from components.serving.triton_config import (
    ServingOptions,
    build_config,
    render,
    served_versions,
    with_parameters,
    with_served_versions,
)

MANIFEST = "faceforge.json"
CLAIM = "faceforge.claim"
PYTHON_MODEL = Path(__file__).with_name("python_backend_model.py")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def check_model_name(name: str) -> str:
    """A single safe path component: no '/', no '..', nothing Triton or S3 would read differently."""
    if not _NAME.match(name) or ".." in name:
        raise ValueError(f"model name {name!r} is not allowed: use letters, digits, '_', '-', '.' (no '/' or '..')")
    return name


def _version_dirs(store: Store, model: str) -> dict[int, set[str]]:
    found: dict[int, set[str]] = {}
    for key in store.list(f"{model}/"):
        parts = key.split("/")
        if len(parts) >= 3 and parts[1].isdigit():
            found.setdefault(int(parts[1]), set()).add("/".join(parts[2:]))
    return found


def complete_versions(store: Store, model: str) -> list[int]:
    return sorted(v for v, files in _version_dirs(store, check_model_name(model)).items() if MANIFEST in files)


def served(store: Store, model: str) -> list[int]:
    text = store.read(f"{check_model_name(model)}/config.pbtxt")
    return served_versions(text.decode(), f"{store.url}/{model}/config.pbtxt") if text else []


def publish_version(store: Store, model: str, files: dict[str, Path], config_for: Callable[[int], str],
                    metadata: dict[str, Any], serve: bool = True) -> int:
    """Upload ``files`` as the next version, verify, then (``serve``) serve it; returns the new version number.

    Without ``serve`` the version is complete but not loaded: a promotion publishes first and switches last
    (flows/promotion.py), so nothing answers with a version whose gallery templates are not ready."""
    check_model_name(model)
    for path in files.values():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: model file to publish not found")
    version = max(_version_dirs(store, model), default=0) + 1
    while not store.create(f"{model}/{version}/{CLAIM}", b""):  # taken by a concurrent publisher: next one
        version += 1
    prefix = f"{model}/{version}/"
    try:
        checksums = {}
        for name, path in files.items():
            store.upload(prefix + name, Path(path))
            expected, stored = sha256_file(Path(path)), store.sha256(prefix + name)
            if stored != expected:
                raise StoreError(f"{store.url}/{prefix}{name}: stored checksum {stored[:12]} != {expected[:12]}")
            checksums[name] = expected
        config = config_for(version)
        # The config this version was published with (its tensors, batching): serving it again later starts
        # from it, not from whichever version's config is in place then (their tensors may differ).
        manifest = {"version": version, "sha256": checksums, "config": config, **metadata}
        store.write(prefix + MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
        if serve:
            store.write(f"{model}/config.pbtxt", config.encode())
    except BaseException:
        store.delete_prefix(prefix)  # a partial version must not linger as if it were a candidate
        raise
    return version


def version_files(onnx_path: Path, backend: str) -> dict[str, Path]:
    """What goes into a version folder for ``backend``."""
    files = {"model.onnx": Path(onnx_path)}
    if backend == "python":
        files["model.py"] = PYTHON_MODEL
    return files


def publish_onnx(store: Store, model: str, onnx_path: Path, options: ServingOptions,
                 metadata: dict[str, Any], serve: bool = True) -> int:
    """:func:`publish_version` for one ONNX model: the backend's files, the config generated from its graph.

    ``serve=False`` leaves what is served alone: with a photo-in model the pair is switched afterwards
    (components/serving/pipeline_version.serve_pair), never the embedder alone."""
    def config_for(version: int) -> str:
        return render(build_config(onnx_path, model, [version], options))

    return publish_version(store, model, version_files(onnx_path, options.backend), config_for, metadata, serve)


def serve_existing(store: Store, model: str, version: int, keep: list[int] | tuple[int, ...] = ()) -> int:
    """Serve the complete version ``version`` (with ``keep``, else alone), its own lineage in the parameters."""
    versions = complete_versions(store, model)
    if version not in versions:
        raise ValueError(f"{store.url}/{model}: version {version} does not exist or is incomplete "
                         f"(available {versions})")
    manifest = read_manifest(store, model, version)
    lineage = manifest.get("lineage", {})
    source = f"{store.url}/{model}/config.pbtxt"
    config = with_served_versions(version_config(store, model, manifest), sorted({version, *keep}), source)
    if lineage:  # the served version's own record, not the one of whichever version was published last
        config = with_parameters(config, Lineage.from_manifest(lineage).config_parameters(), source)
    store.write(f"{model}/config.pbtxt", config.encode())
    return version


def version_config(store: Store, model: str, manifest: dict[str, Any]) -> str:
    """The config a version was published with (in its manifest); the repository's current one for versions
    published before manifests kept it."""
    text = manifest.get("config") or (store.read(f"{model}/config.pbtxt") or b"").decode()
    if not text:
        raise ValueError(f"{store.url}/{model}/config.pbtxt: missing, nothing is being served")
    return text


def rollback(store: Store, model: str, to: int | None = None) -> int:
    """Serve version ``to`` (default: the complete version before the one served now); returns it."""
    return serve_existing(store, model, rollback_target(store, model, to))


def rollback_target(store: Store, model: str, to: int | None = None) -> int:
    """``to``, else the complete version before the one served now."""
    if to is None:
        current = served(store, model)
        older = [v for v in complete_versions(store, model) if current and v < max(current)]
        if not older:
            raise ValueError(f"{store.url}/{model}: no earlier complete version to roll back to "
                             f"(served {current}, available {complete_versions(store, model)})")
        to = older[-1]
    return to


def published_version(store: Store, model: str, lineage: Lineage) -> int | None:
    """The newest complete version holding this very model (same ``model.onnx`` SHA-256, same MLflow version)."""
    for version in reversed(complete_versions(store, model)):
        manifest = read_manifest(store, model, version)
        if (manifest.get("sha256", {}).get("model.onnx") == lineage.model_sha256
                and manifest.get("lineage", {}).get("mlflow_model_version") == lineage.mlflow_model_version):
            return version
    return None


def served_manifest(store: Store, model: str) -> dict[str, Any] | None:
    """The manifest of the version served now (the newest, if several), or None when nothing is served."""
    current = served(store, model)
    return read_manifest(store, model, max(current)) if current else None


def read_manifest(store: Store, model: str, version: int) -> dict[str, Any]:
    raw = store.read(f"{check_model_name(model)}/{version}/{MANIFEST}")
    if raw is None:
        raise ValueError(f"{store.url}/{model}/{version}: not a complete version")
    return json.loads(raw)
