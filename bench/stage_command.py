"""A stage as a user runs it: ``faceforge <stage> --set ...``, timed whole (process start, imports, writing)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
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
