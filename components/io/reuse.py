"""Reuse what a stage's previous output already holds, so that adding 1% new photos costs about 1% of a run.

A stage that keeps its previous output (DVC ``persist: true``) still writes its new output whole into a
temporary folder (components/io/atomic.py): rows whose inputs are unchanged are copied from the previous
manifest and their files hard-linked (no bytes copied), only the rest is computed. What may be reused is
decided by a fingerprint written next to the manifest: the stage's settings and the source of the code that
makes its rows. A different fingerprint, a missing or unreadable manifest: nothing is reused, the stage
computes everything, as on a first run. See docs/architecture.md "Incremental data stages".
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Hashable, Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import pandas as pd

FINGERPRINT_FILE = "fingerprint.txt"
Row = dict[str, Any]
Result = TypeVar("Result")


def fingerprint(settings: object, modules: list[ModuleType]) -> str:
    """A digest of ``settings`` (its repr) and the source files of ``modules``: what makes a stage's rows."""
    digest = hashlib.sha256(repr(settings).encode())
    for module in modules:
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()[:16]


def previous_manifest(folder: Path, stamp: str | None, columns: list[str]) -> pd.DataFrame:
    """The previous output's manifest (only ``columns``) when it was made with fingerprint ``stamp``, else an
    empty frame with those columns (always for ``stamp`` None: an input of unknown making)."""
    try:
        if stamp is not None and read_fingerprint(folder) == stamp:
            return pd.read_parquet(Path(folder) / "manifest.parquet", columns=columns)
    except (OSError, ValueError):  # no previous output, or one this code cannot read: start afresh
        pass
    return pd.DataFrame(columns=columns)


def matching_rows(previous: pd.DataFrame, items: list[Row], key: Callable[[Row], Hashable]) -> list[Row | None]:
    """For each item, the previous row with the same ``key`` (both are rows with the key's columns), else None."""
    known = {key(row): row for row in previous.to_dict("records")}
    return [known.get(key(item)) for item in items]


def reuse_or_compute(items: list[Row], reused: list[Result | None],
                     compute: Callable[[list[Row]], Iterable[Result]]) -> tuple[list[Result], int]:
    """One result per item, in order: the reused one where there is one, else ``compute``'s, which is called once
    with only the items that have none (a single parallel batch). Returns the results and how many were computed."""
    todo = [item for item, old in zip(items, reused, strict=True) if old is None]
    fresh = iter(compute(todo))
    return [old if old is not None else next(fresh) for old in reused], len(todo)


def write_fingerprint(folder: Path, stamp: str) -> None:
    (Path(folder) / FINGERPRINT_FILE).write_text(stamp + "\n")


def read_fingerprint(folder: Path) -> str | None:
    """The fingerprint an output was made with; None for one without (made before outputs had one)."""
    try:
        return (Path(folder) / FINGERPRINT_FILE).read_text().strip()
    except OSError:
        return None


def link_file(source: Path, target: Path) -> None:
    """Put ``source``'s bytes at ``target``: a hard link where the file system allows it, else a copy."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # two rows naming one content-addressed file
        return
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not supported
        shutil.copy2(source, target)
