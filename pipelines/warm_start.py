"""DVC stage ``warm_start``: the registered version a run continues from, as a versioned input of the pipeline.

``warm_start.version`` / ``train_md5`` (written by ``faceforge continue-from`` and the scheduled retrain, which
read the registry: flows/warm_start.py) name that version's train output by DVC's content hash. This stage copies
that output out of DVC's cache, so what train starts from is decided by params git holds and by content DVC
holds, never by the registry's state at run time: a clone of the run commit + ``dvc pull`` has the same start,
and ``dvc status`` says when it changed. ``version: null`` writes only ``warm_start.json`` saying so (train then
starts from ``train.init_from``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from components.io.atomic import atomic_dir
from pipelines.common import timed, write_report
from pipelines.params import Params

STAGE = "warm_start"
RECORD = "warm_start.json"


def cached_directory(md5: str) -> tuple[Any, list[dict[str, str]] | None, list[str]]:
    """(the local DVC cache, the files of the directory DVC stored as ``md5`` -- ``<hash>.dir`` -- or None
    when the cache lacks its listing, the relative paths of those files the cache lacks)."""
    from dvc.repo import Repo

    cache = Repo(".").cache.local
    listing = Path(cache.oid_to_path(md5))
    if not listing.is_file():
        return cache, None, []
    entries = json.loads(listing.read_text())
    return cache, entries, [e["relpath"] for e in entries if not Path(cache.oid_to_path(e["md5"])).is_file()]


def copy_from_dvc_cache(md5: str, dest: Path, what: str) -> int:
    """Copy the directory DVC stored as ``md5`` (``<hash>.dir``) into ``dest``; returns the number of files.
    Refuses, naming what to run, when the local cache lacks it."""
    cache, entries, missing = cached_directory(md5)
    if entries is None:
        raise FileNotFoundError(f"{what}: DVC's cache has no {md5}: `faceforge continue-from` fetches it from the "
                                "DVC remote, or `dvc pull` at that version's run commit")
    if missing:
        raise FileNotFoundError(f"{what}: DVC's cache lacks {len(missing)} of its files ({missing[0]}, ...): "
                                "`faceforge continue-from` fetches them from the DVC remote")
    for entry in entries:
        target = dest / entry["relpath"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(cache.oid_to_path(entry["md5"]), target)
    return len(entries)


def read_warm_start(out_dir: Path) -> dict[str, Any] | None:
    """The record of the version this stage holds, or None for a run that starts from ``train.init_from`` (also
    when the stage never ran: ``faceforge train`` on its own)."""
    path = Path(out_dir) / RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if record.get("version") is not None else None


def run(params: Params) -> dict[str, Any]:
    p = params.warm_start
    record: dict[str, Any] = {"version": p.version}
    report: dict[str, Any] = {"version": p.version}
    with timed(report), atomic_dir(p.out_dir) as tmp:
        if p.version is not None:
            what = f"{params.mlflow.registered_model} version {p.version}'s train output"
            report["files"] = copy_from_dvc_cache(str(p.train_md5), tmp, what)
            if not (tmp / "model.json").is_file() or not (tmp / "backbone.pth").is_file():
                raise ValueError(f"{what} ({p.train_md5}) holds no backbone.pth + model.json")
            record |= {"registered_model": params.mlflow.registered_model, "train_md5": p.train_md5}
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    write_report(STAGE, report)
    return report
