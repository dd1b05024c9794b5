"""A stage as a user runs it: ``faceforge <stage> --set ...``, timed whole (process start, imports, writing)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

FACEFORGE = str(Path(sys.executable).parent / "faceforge")


def run_stage(stage: str, sets: list[str]) -> tuple[dict[str, Any], float]:
    """(the stage's ``reports/<stage>.json``, wall seconds); a failure raises with the command's stderr tail."""
    args = [FACEFORGE, stage, *[a for s in sets for a in ("--set", s)]]
    start = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return json.loads(Path(f"reports/{stage}.json").read_text()), seconds


def measure_command(args: list[str], cwd: Path | None = None, itself: bool = False,
                    env: dict[str, str] | None = None) -> dict[str, float]:
    """Run ``args`` to the end: wall seconds, and the memory of the processes it starts under it (a stage and
    its pool workers, not DVC's own process; with ``itself``, the command's own process too), sampled every
    0.1 s: ``peak_rss_mb`` of the largest one and ``peak_total_rss_mb`` of all of them at once. ``env``: the
    command's environment (default: this process's)."""
    import psutil

    errors = tempfile.TemporaryFile()  # not a pipe: a command that writes much would block on a full one
    start = time.perf_counter()
    process = subprocess.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=errors, env=env)
    parent = psutil.Process(process.pid)
    largest = total = 0
    while process.poll() is None:
        sizes = []
        for member in [parent, *parent.children(recursive=True)] if itself else parent.children(recursive=True):
            try:
                sizes.append(member.memory_info().rss)
            except psutil.Error:  # ended between listing and reading
                continue
        largest, total = max([largest, *sizes]), max(total, sum(sizes))
        time.sleep(0.1)
    seconds = time.perf_counter() - start
    if process.returncode:
        errors.seek(0)
        raise RuntimeError(f"{' '.join(args)} failed in {cwd or Path.cwd()}:\n{errors.read().decode()[-3000:]}")
    return {"seconds": round(seconds, 3), "peak_rss_mb": round(largest / 2**20, 1),
            "peak_total_rss_mb": round(total / 2**20, 1)}


def measure_sizes(measure: Callable[[int], dict[str, Any]], sizes: list[int], out: Path, unit: str,
                  header: dict[str, Any]) -> None:
    """``measure`` each size in turn, rewriting ``out`` after each (a long run keeps what it measured)."""
    results: dict[str, Any] = {**header, "sizes": {}}
    for size in sizes:
        print(f"{size} {unit} ...", flush=True)
        results["sizes"][str(size)] = measure(size)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results["sizes"][str(size)], indent=1), flush=True)
