"""``make demo`` as a new user runs it: a fresh clone of this commit, the whole command timed, part by part.

The README promises the demo (install, sample photos, ``dvc repro`` of every stage, ``dvc push``) in under 10
minutes on 2 cores and a served model worth serving. This bench clones the committed HEAD into a temporary
folder, runs ``make demo`` there and stamps every line it prints, so each part's seconds are the time from its
first line to the next part's (``Running stage 'x':`` for the stages, the make recipe's own lines for the rest).
uv's package cache is used as it is on this machine: package downloads are the network's time, not the
project's (the bytecode compilation and the install itself are counted). Also recorded: what the demo serves
(the quantize verdict's variant) and its figures on the held-out people. Writes ``reports/bench/demo.json``.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

OUT = Path("reports/bench/demo.json")
GOAL_S = 600.0
# The Makefile's recipe lines, in the order `make demo` runs them; stages are found by DVC's own line.
RECIPE = [("install", re.compile(r"\buv sync\b")), ("sample", re.compile(r"\bfaceforge sample\b")),
          ("dvc add", re.compile(r"\bdvc add\b")), ("dvc repro start", re.compile(r"\bdvc repro$")),
          ("remote", re.compile(r"\bfaceforge remote\b")), ("dvc push", re.compile(r"\bdvc push$"))]
STAGE = re.compile(r"^Running stage '([a-z_]+)':")


def _part(line: str) -> str | None:
    """The part of the demo that ``line`` starts, if it starts one."""
    if found := STAGE.match(line):
        return found.group(1)
    command = line.split("#")[0].strip()
    return next((name for name, pattern in RECIPE if pattern.search(command)), None)


def _served(clone: Path) -> dict[str, Any]:
    evaluated = json.loads((clone / "reports/eval.json").read_text())
    quantized = json.loads((clone / "reports/quantize.json").read_text())
    return {"variant": quantized["serve"], "reasons": quantized["serve_reasons"],
            "clean_tar_at_far_1e-3": evaluated["ijbc"]["tar_at_far_1e-3"],
            "clean_tar_at_far_1e-4": evaluated["ijbc"]["tar_at_far_1e-4"],
            "hard_tar_at_far_1e-3": evaluated["ijbc_hard"]["tar_at_far_1e-3"],
            "orl_holdout_accuracy": evaluated["verification"]["orl_holdout"]["accuracy"]}


def main() -> None:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "faceforge"
        subprocess.run(["git", "clone", "-q", str(Path.cwd()), str(clone)], check=True)
        marks: list[tuple[str, float]] = []
        start = time.perf_counter()
        with subprocess.Popen(["make", "demo"], cwd=clone, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as demo:
            assert demo.stdout is not None
            for line in demo.stdout:
                if part := _part(line.strip()):
                    marks.append((part, time.perf_counter() - start))
                    print(f"{marks[-1][1]:7.1f} s  {part}", flush=True)
        total = time.perf_counter() - start
        if demo.returncode:
            raise RuntimeError(f"make demo failed in {clone} (exit {demo.returncode})")
        ends = [t for _, t in marks[1:]] + [total]
        parts = {name: round(end - begin, 1) for (name, begin), end in zip(marks, ends, strict=True)}
        served = _served(clone)
    result = {"machine": "2 CPU cores", "commit": commit, "seconds": round(total, 1), "goal_seconds": GOAL_S,
              "parts_seconds": parts, "served": served,
              "note": "fresh clone; uv's package cache warm (downloads excluded, install and bytecode included)"}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
