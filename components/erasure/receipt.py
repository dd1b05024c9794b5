"""The receipt of a forget: an append-only log of what was removed from where, hashes only, no face data.

A receipt names the person by a keyed digest of their identity and each photo by a digest of its SHA-256, so
that "was X forgotten?" can be answered by whoever knows X, while the log itself lists no name, no photo and no
SHA-256 a search for the person would find. Each receipt carries the SHA-256 of the log before it was appended
(``previous``): a line edited or removed later breaks the chain, which :func:`verify_log` reports."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

LOG_NAME = "receipts.jsonl"


def subject_digest(identity: str) -> str:
    """The identity as the receipts name it (not reversible; the same identity gives the same digest)."""
    return hashlib.sha256(f"faceforge-forget:identity:{identity}".encode()).hexdigest()


def photo_digest(sha256: str) -> str:
    """A photo's SHA-256 as the receipts name it: found again from the photo, never the photo's own hash."""
    return hashlib.sha256(f"faceforge-forget:photo:{sha256}".encode()).hexdigest()


@dataclass
class Removal:
    store: str  # workspace | dvc-cache | dvc-remote | gallery | mlflow | registry
    where: str  # a folder, a remote URL, a database (credentials never: see flows/forget.py)
    what: str  # photos, crops, table rows, objects, templates, artifacts ...
    count: int
    objects: list[str] = field(default_factory=list)  # content hashes (DVC md5 object ids) removed


@dataclass
class Receipt:
    id: str
    subject: str
    photos: list[str]
    removals: list[Removal]
    kept_shared: list[str]  # objects that hold the person but another current file still needs (named here)
    failed: list[str]  # removals that did not succeed: the command exits non-zero
    notes: list[str]
    time: str = ""
    previous: str = ""

    def json(self) -> dict[str, Any]:
        return asdict(self)


def new_receipt_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4)


def append_receipt(folder: Path, receipt: Receipt) -> Path:
    """Append ``receipt`` to ``folder/receipts.jsonl`` (fsynced) and write it alone as ``<id>.json``; returns the
    latter, the path ``faceforge forget`` prints."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / LOG_NAME
    receipt.previous = hashlib.sha256(log.read_bytes()).hexdigest() if log.is_file() else ""
    receipt.time = receipt.time or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    line = json.dumps(receipt.json(), sort_keys=True)
    with log.open("a", encoding="utf-8") as out:
        out.write(line + "\n")
        out.flush()
        os.fsync(out.fileno())
    single = folder / f"{receipt.id}.json"
    single.write_text(json.dumps(receipt.json(), indent=2, sort_keys=True) + "\n")
    return single


def verify_log(folder: Path) -> list[str]:
    """Where the chain breaks: each receipt's ``previous`` must be the SHA-256 of the log's lines before it."""
    log = folder / LOG_NAME
    if not log.is_file():
        return []
    problems, before = [], b""
    for number, line in enumerate(log.read_bytes().splitlines(keepends=True), 1):
        expected = hashlib.sha256(before).hexdigest() if before else ""
        if json.loads(line).get("previous") != expected:
            problems.append(f"{log}:{number}: the log before this receipt was changed")
        before += line
    return problems
