"""Nested report dicts as flat dotted keys: how MLflow, Triton parameters and lineage records store them."""

from __future__ import annotations

import math
from typing import Any


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> ``{"a.b.c": leaf}``; lists stay leaves (MLflow params are strings anyway)."""
    if not isinstance(tree, dict):
        return {prefix: tree} if prefix else {}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def numeric(tree: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a report (booleans and ``null`` TAR values below the ROC's resolution are skipped)."""
    return {k: float(v) for k, v in flatten(tree, prefix).items()
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)}
