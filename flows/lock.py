"""One retraining (or forget), and one serving change, at a time per workspace.

Two retrains at once would race on DVC outputs and registry versions (a forget rewrites the same outputs, so it
takes the same lock); two serving runs (the approval watcher
firing while someone runs ``promote`` or ``rollback``) on what a repository serves. Each has its own file lock
(``filelock``: works on every OS and is released by the OS if the holder dies), so approving a model never
waits for a training run: the second of a kind waits up to its timeout (``orchestration.lock_timeout_s``,
``orchestration.serving_lock_timeout_s``) and then refuses with the holder's identity. Across machines, the
serving repository's conditional writes keep version numbers unique (components/serving/repository.py).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

from filelock import FileLock, Timeout

from pipelines.params import Params, load_params


class WorkspaceBusy(RuntimeError):
    """Another run holds the workspace lock."""


@contextmanager
def exclusive(lock_file: Path, timeout_s: float, purpose: str) -> Iterator[None]:
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    holder = lock_file.with_suffix(".holder")
    lock = FileLock(str(lock_file))
    try:
        lock.acquire(timeout=timeout_s)
    except Timeout:
        who = holder.read_text().strip() if holder.is_file() else "unknown"
        raise WorkspaceBusy(f"{purpose}: another run holds {lock_file} ({who}); waited {timeout_s:g} s. "
                            "Retry later or raise its orchestration.*lock_timeout_s") from None
    try:
        holder.write_text(f"{purpose} pid {os.getpid()} on {socket.gethostname()} since "
                          f"{time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        yield
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


@contextmanager
def in_workspace(path: str | Path) -> Iterator[None]:
    """DVC stages and reports are relative to the repository root; a worker may start anywhere."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


@contextmanager
def locked_workspace(workspace: str | Path, purpose: Literal["retrain", "serving"], lock_timeout_s: float | None,
                     overrides: list[str] | None = None, holder: str | None = None) -> Iterator[Params]:
    """What every flow starts with: the repository as working folder, its params, the lock of its kind.
    ``holder``: the run named in the lock's holder file and a waiting run's refusal (default: ``purpose``)."""
    with in_workspace(workspace):
        params = load_params("params.yaml", overrides or [])
        o = params.orchestration
        lock_file, default = ((o.lock_file, o.lock_timeout_s) if purpose == "retrain"
                              else (o.serving_lock_file, o.serving_lock_timeout_s))
        with exclusive(lock_file, default if lock_timeout_s is None else lock_timeout_s, holder or purpose):
            yield params
