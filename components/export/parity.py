"""How closely two runtimes agree on the same faces: the numbers export and quantize report and gate on."""

from __future__ import annotations

import numpy as np


def agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Cosine between matching embeddings (mean, min) and the largest absolute / relative element difference."""
    if reference.shape != candidate.shape:
        raise ValueError(f"embedding shapes differ: {reference.shape} vs {candidate.shape}")
    a, b = reference.astype(np.float64), candidate.astype(np.float64)
    cos = np.einsum("ij,ij->i", a, b) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    diff = np.abs(a - b).max()
    return {"mean_cosine": round(float(cos.mean()), 7), "min_cosine": round(float(cos.min()), 7),
            "max_abs_diff": float(f"{diff:.3g}"), "max_rel_diff": float(f"{diff / np.abs(a).max():.3g}"),
            "faces": len(a)}
