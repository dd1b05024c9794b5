"""The ``rejected.csv`` contract: every dropped input is listed with ``path,stage,reason``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from components.io.atomic import atomic_path

COLUMNS = ["path", "stage", "reason", "detail"]


@dataclass(frozen=True)
class Rejection:
    path: str
    stage: str
    reason: str
    detail: str = ""


def write_rejected(path: Path | str, rejections: Iterable[Rejection]) -> dict[str, int]:
    """Write the CSV atomically and return counts per reason (for ``reports/<stage>.json``)."""
    rows = [r.__dict__ for r in rejections]
    frame = pd.DataFrame(rows, columns=COLUMNS).sort_values(["path", "reason"], kind="stable")
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return dict(Counter(frame["reason"]))
