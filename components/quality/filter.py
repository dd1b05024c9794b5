"""Decide, for every aligned face, whether it trains: thresholds, near-duplicates, identity size."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class QualityThresholds:
    min_score: float
    min_interocular: float
    min_blur: float
    max_yaw: float
    max_pitch: float
    min_brightness: float
    max_brightness: float
    duplicate_hamming: int
    min_images_per_identity: int


def _near_duplicates(hashes: list[str], max_distance: int) -> np.ndarray:
    """Greedy within one identity, best-first: a face is a duplicate if close to one already kept."""
    bits = np.array([int(h, 16) for h in hashes], dtype=np.uint64)
    kept: list[int] = []
    dup = np.zeros(len(bits), dtype=bool)
    for i, value in enumerate(bits):
        if kept and int(np.bitwise_count(bits[kept] ^ value).min()) <= max_distance:
            dup[i] = True
        else:
            kept.append(i)
    return dup


def apply_thresholds(table: pd.DataFrame, t: QualityThresholds) -> pd.Series:
    """Return a ``status`` per row: ``ok`` or the first failed check's reason code.

    Checks run cheapest-to-explain first; a face failing several is reported under the first one, so
    the counts in the report add up to the number rejected.
    """
    status = pd.Series("ok", index=table.index, dtype=object)
    for reason, failed in [
        ("low_score", table.score < t.min_score),
        ("small_face", table.interocular < t.min_interocular),
        ("blur", table.blur < t.min_blur),
        ("pose", (table.yaw > t.max_yaw) | (table.pitch > t.max_pitch)),
        ("exposure", (table.brightness < t.min_brightness) | (table.brightness > t.max_brightness)),
    ]:
        status[(status == "ok") & failed] = reason
    candidates = table[status == "ok"].sort_values(["identity", "score"], ascending=[True, False])
    for _, group in candidates.groupby("identity", sort=False):
        dup = _near_duplicates(group.phash.tolist(), t.duplicate_hamming)
        status[group.index[dup]] = "duplicate"
    counts = table[status == "ok"].groupby("identity").size()
    small = counts[counts < t.min_images_per_identity].index
    status[(status == "ok") & table.identity.isin(small)] = "few_images"
    return status
