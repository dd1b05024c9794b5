"""What every stage entry point shares: params loading, the report file, timing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from components.io.atomic import write_json

REPORTS = Path("reports")


def write_report(stage: str, payload: dict[str, Any]) -> Path:
    """``reports/<stage>.json`` (docs/architecture.md, "Contracts"), written atomically."""
    path = REPORTS / f"{stage}.json"
    write_json(path, payload)
    return path


@contextmanager
def timed(report: dict[str, Any], key: str = "seconds") -> Iterator[None]:
    start = time.perf_counter()
    yield
    report[key] = round(time.perf_counter() - start, 3)
