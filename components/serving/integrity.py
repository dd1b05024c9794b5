"""Tamper evidence for a serving repository: every served version's files against its own manifest.

A version's ``faceforge.json`` lists the SHA-256 of every file it was published with (the model, and for the
photo-in model the code Triton executes). Anyone who can write the repository can replace a file, add one
(the python backend imports what lies next to ``model.py``) or delete one; Triton would load the result on
its next poll. :func:`check_served` finds each of these; the approval watcher runs it on every poll and
restores what it finds (flows/serving.py), ``faceforge promote --check`` reports it (docs/serving.md).

Hashing a 170 MB model from S3 every 30 s is wasteful: a file is hashed again only when its fingerprint (S3:
ETag, size, last-modified, all set by S3 on every write; a folder: size, times, inode) differs from the one
its last hash was taken at (``HashCache``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from components.serving.repository import CLAIM, MANIFEST, check_model_name, read_manifest, served
from components.serving.store import Store

NOT_SHIPPED = {MANIFEST, CLAIM}  # a version folder's own bookkeeping, not files Triton reads


@dataclass
class HashCache:
    """``{store url + key: [fingerprint, sha256]}`` in a JSON file (none: in memory only)."""

    path: Path | None = None
    entries: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None) -> HashCache:
        try:
            entries = json.loads(path.read_text()) if path else {}
        except (OSError, ValueError):
            entries = {}  # a missing or damaged cache only costs hashing again
        return cls(path, entries if isinstance(entries, dict) else {})

    def sha256(self, store: Store, key: str, fingerprint: str) -> str:
        name = f"{store.url}/{key}"
        known = self.entries.get(name)
        if known and known[0] == fingerprint:
            return known[1]
        digest = store.sha256(key)
        # the fingerprint read before hashing: a write in between changes it, and the next check hashes again
        self.entries[name] = [fingerprint, digest]
        return digest

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(self.entries, sort_keys=True))
        os.replace(tmp, self.path)


@dataclass(frozen=True)
class VersionCheck:
    """What differs in one served version: changed, missing and unexpected files (keys in the store)."""

    model: str
    version: int
    changed: dict[str, str]  # key -> what the manifest says it should hash to
    missing: dict[str, str]
    unexpected: list[str]
    manifest: dict | None  # None: the manifest itself is missing or unreadable

    @property
    def intact(self) -> bool:
        return self.manifest is not None and not (self.changed or self.missing or self.unexpected)

    def problems(self) -> list[str]:
        where = f"{self.model}/{self.version}"
        if self.manifest is None:
            return [f"{where}/{MANIFEST}: missing or unreadable"]
        return ([f"{key}: changed (the manifest's SHA-256 is {sha[:12]})" for key, sha in self.changed.items()]
                + [f"{key}: missing" for key in self.missing]
                + [f"{key}: not in the manifest" for key in self.unexpected])


def check_version(store: Store, model: str, version: int, cache: HashCache) -> VersionCheck:
    prefix = f"{check_model_name(model)}/{version}/"
    try:
        manifest = read_manifest(store, model, version)
        expected = {prefix + name: sha for name, sha in manifest["sha256"].items()}
    except (ValueError, KeyError, TypeError, AttributeError):
        return VersionCheck(model, version, {}, {}, [], None)
    present = set(store.list(prefix))
    changed, missing = {}, {}
    for key, sha in sorted(expected.items()):
        fingerprint = store.fingerprint(key) if key in present else None
        if fingerprint is None:
            missing[key] = sha
        elif cache.sha256(store, key, fingerprint) != sha:
            changed[key] = sha
    unexpected = sorted(k for k in present if k not in expected and k[len(prefix):] not in NOT_SHIPPED)
    return VersionCheck(model, version, changed, missing, unexpected, manifest)


def check_served(store: Store, models: list[str], cache: HashCache) -> list[VersionCheck]:
    """Every served version of each of ``models`` (those with nothing served are skipped)."""
    return [check_version(store, model, version, cache) for model in models for version in served(store, model)]
