"""Publishing versions into a Triton model repository, and switching the served one.

Layout: ``<model>/config.pbtxt`` and ``<model>/<version>/{model.onnx, model.py?, faceforge.json}``.
- Versions only grow; an existing version folder is never written to.
- A version is published in three steps: upload its files, verify each stored object's SHA-256 against the
  local file, write ``faceforge.json`` (checksums + lineage; its presence marks the version complete). Only then
  is ``config.pbtxt`` rewritten to serve it: Triton (``version_policy: specific``) never sees a half-uploaded
  version. Any failure deletes the partial version, leaving the repository as it was.
- Rollback rewrites only the version policy; nothing is deleted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from components.io.raw_folder import sha256_file
from components.serving.store import Store, StoreError
from components.serving.triton_config import (
    ServingOptions,
    build_config,
    render,
    served_versions,
    with_served_versions,
)

MANIFEST = "faceforge.json"
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
                    metadata: dict[str, Any]) -> int:
    """Upload ``files`` as the next version, verify, then serve it; returns the new version number."""
    check_model_name(model)
    for path in files.values():
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: model file to publish not found")
    version = max(_version_dirs(store, model), default=0) + 1
    prefix = f"{model}/{version}/"
    try:
        checksums = {}
        for name, path in files.items():
            store.upload(prefix + name, Path(path))
            expected, stored = sha256_file(Path(path)), store.sha256(prefix + name)
            if stored != expected:
                raise StoreError(f"{store.url}/{prefix}{name}: stored checksum {stored[:12]} != {expected[:12]}")
            checksums[name] = expected
        manifest = {"version": version, "sha256": checksums, **metadata}
        store.write(prefix + MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
        store.write(f"{model}/config.pbtxt", config_for(version).encode())
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
                 metadata: dict[str, Any]) -> int:
    """:func:`publish_version` for one ONNX model: the backend's files, the config generated from its graph."""
    return publish_version(store, model, version_files(onnx_path, options.backend),
                           lambda v: render(build_config(onnx_path, model, [v], options)), metadata)


def rollback(store: Store, model: str, to: int | None = None) -> int:
    """Serve version ``to`` (default: the complete version before the one served now); returns it."""
    versions = complete_versions(store, model)
    current = served(store, model)
    if to is None:
        older = [v for v in versions if current and v < max(current)]
        if not older:
            raise ValueError(f"{store.url}/{model}: no earlier complete version to roll back to "
                             f"(served {current}, available {versions})")
        to = older[-1]
    if to not in versions:
        raise ValueError(f"{store.url}/{model}: version {to} does not exist or is incomplete (available {versions})")
    text = store.read(f"{model}/config.pbtxt")
    if text is None:
        raise ValueError(f"{store.url}/{model}/config.pbtxt: missing, nothing is being served")
    store.write(f"{model}/config.pbtxt",
                with_served_versions(text.decode(), [to], f"{store.url}/{model}/config.pbtxt").encode())
    return to


def read_manifest(store: Store, model: str, version: int) -> dict[str, Any]:
    raw = store.read(f"{check_model_name(model)}/{version}/{MANIFEST}")
    if raw is None:
        raise ValueError(f"{store.url}/{model}/{version}: not a complete version")
    return json.loads(raw)
