"""Drift without labels: is a window of live traffic still a sample of what the version was evaluated on?

Three kinds of test, each against the version's reference (components/monitoring/reference.py), held to one
false-alarm rate for the whole check (``alpha``, split over the tests: Bonferroni):
- the share of photos with a face: Fisher's exact test (a camera that stopped showing faces);
- each quality measure (blur, brightness, yaw, pitch, eye distance, detector score): SciPy's two-sample
  Kolmogorov-Smirnov test, and a floor on its distance (``min_effect``) so that a large window does not call a
  harmless shift significant;
- the embeddings: the maximum mean discrepancy (RBF kernel, median-distance bandwidth) with SciPy's permutation
  test: a new population, or faces the model maps differently, move it even when every quality measure looks
  fine.
The live pairs' scores are reported beside them: the share of pairs of live faces above each served threshold,
against the same share among the reference faces (more pairs above it = more false matches to come).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from components.monitoring.capture import MEASURES, Window
from components.monitoring.reference import Reference

MMD_REFERENCE = 500  # reference faces in the permutation test (kernel matrix of reference + window faces)
TESTS = len(MEASURES) + 2  # faces found, each quality measure, the embeddings


@dataclass(frozen=True)
class DriftSettings:
    alpha: float = 0.01
    min_faces: int = 30
    min_effect: float = 0.15
    permutations: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        # a permutation test's smallest p-value is 1 / (permutations + 1): it must be able to fall under the level
        if (self.permutations + 1) * self.alpha / TESTS <= 1:
            raise ValueError(f"monitoring.permutations {self.permutations}: at monitoring.alpha {self.alpha} the "
                             f"embeddings' test needs more than {TESTS / self.alpha - 1:.0f} to ever find drift")


def _mmd_test(reference: np.ndarray, live: np.ndarray, settings: DriftSettings) -> dict[str, float]:
    rng = np.random.default_rng(settings.seed)
    if len(reference) > MMD_REFERENCE:
        reference = reference[rng.choice(len(reference), MMD_REFERENCE, replace=False)]
    pooled = np.concatenate([reference, live]).astype(np.float64)
    squared = np.maximum(2.0 - 2.0 * pooled @ pooled.T, 0.0)  # unit vectors: |a - b|^2 = 2 - 2 a.b
    bandwidth = float(np.median(squared[np.triu_indices(len(pooled), 1)])) or 1.0
    kernel = np.exp(-squared / bandwidth)

    def mmd2(x: np.ndarray, y: np.ndarray) -> float:  # indices into the pooled faces; the biased estimate
        return float(kernel[np.ix_(x, x)].mean() + kernel[np.ix_(y, y)].mean() - 2 * kernel[np.ix_(x, y)].mean())

    n = len(reference)
    result = stats.permutation_test((np.arange(n), np.arange(n, len(pooled))), mmd2, vectorized=False,
                                    n_resamples=settings.permutations, alternative="greater",
                                    permutation_type="independent", rng=settings.seed)
    return {"statistic": float(result.statistic), "p_value": float(result.pvalue),
            "null_p99": float(np.quantile(result.null_distribution, 0.99))}


def _pair_scores(embeddings: np.ndarray) -> np.ndarray:
    """Cosine scores of every pair of (unit) embeddings."""
    return (embeddings @ embeddings.T)[np.triu_indices(len(embeddings), 1)]


def _pairs_above(embeddings: np.ndarray, thresholds: dict[str, float | None]) -> dict[str, float | None]:
    scores = _pair_scores(embeddings)
    return {far: (round(float((scores > t).mean()), 4) if t is not None and len(scores) else None)
            for far, t in thresholds.items()}


def _faces_found(reference: Reference, window: Window, level: float, settings: DriftSettings) -> dict[str, Any]:
    """Fewer photos with a face than the reference's: Fisher's exact test on (faces, photos without one)."""
    live = window.faces / window.photos
    expected = reference.faces / reference.photos
    test = stats.fisher_exact([[reference.faces, reference.photos - reference.faces],
                               [window.faces, window.photos - window.faces]], alternative="greater")
    drifted = bool(test.pvalue < level and expected - live >= settings.min_effect)
    return {"signal": "faces_found", "test": "Fisher exact", "statistic": float(expected - live),
            "p_value": float(test.pvalue), "drifted": drifted, "reference_share": expected, "live_share": live}


def compare(reference: Reference, window: Window, settings: DriftSettings) -> dict[str, Any]:
    """The check's verdict (``drift``, ``quiet``, or ``too_little_traffic``), its reasons and every test."""
    result: dict[str, Any] = {"window": window.summary(), "reference": reference.summary(),
                              "settings": settings.__dict__, "tests": [], "reasons": []}
    if window.photos < settings.min_faces:
        result["verdict"] = "too_little_traffic"
        result["reasons"] = [f"{window.photos} photos in the window, fewer than {settings.min_faces}"]
        return result
    level = result["level"] = settings.alpha / TESTS  # Bonferroni
    found = _faces_found(reference, window, level, settings)
    result["tests"].append(found)
    if found["drifted"]:
        result["reasons"].append(f"faces found in {found['live_share']:.0%} of photos vs {found['reference_share']:.0%}"
                                 f" (p {found['p_value']:.1e})")
    if window.faces < settings.min_faces:
        result["verdict"] = "drift" if result["reasons"] else "too_little_traffic"
        result["reasons"].append(f"{window.faces} embedded faces, fewer than {settings.min_faces}: their measures "
                                 "and embeddings untested")
        return result
    for measure in MEASURES:
        test = stats.ks_2samp(reference.measures[measure], window.measures[measure])
        drifted = bool(test.pvalue < level and test.statistic >= settings.min_effect)
        result["tests"].append({"signal": measure, "test": "Kolmogorov-Smirnov", "statistic": float(test.statistic),
                                "p_value": float(test.pvalue), "drifted": drifted,
                                "reference_median": float(np.median(reference.measures[measure])),
                                "live_median": float(np.median(window.measures[measure]))})
        if drifted:
            result["reasons"].append(
                f"{measure}: median {np.median(window.measures[measure]):.3g} live vs "
                f"{np.median(reference.measures[measure]):.3g} reference "
                f"(KS {test.statistic:.2f}, p {test.pvalue:.1e})")
    mmd = _mmd_test(reference.embeddings, window.embeddings, settings)
    drifted = mmd["p_value"] < level
    result["tests"].append({"signal": "embeddings", "test": "MMD permutation", **mmd, "drifted": bool(drifted)})
    if drifted:
        result["reasons"].append(f"embeddings: MMD^2 {mmd['statistic']:.4f} (p {mmd['p_value']:.1e} over "
                                 f"{settings.permutations} permutations)")
    result["pairs_above_threshold"] = {"live": _pairs_above(window.embeddings, reference.thresholds),
                                       "reference": _pairs_above(reference.embeddings, reference.thresholds)}
    result["verdict"] = "drift" if result["reasons"] else "quiet"
    return result


def plot(reference: Reference, window: Window, result: dict[str, Any], path: Path) -> None:
    """Each quality measure (held-out reference, training faces, live window), then the scores: the
    reference's genuine and impostor pairs, the live faces' pairs and the served thresholds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 4, figsize=(16, 7))
    tests = {t["signal"]: t for t in result.get("tests", [])}
    for ax, measure in zip(axes.flat, MEASURES, strict=False):
        ref, live = reference.measures[measure], window.measures[measure]
        bins = np.histogram_bin_edges(np.concatenate([ref, live]), 30)
        ax.hist(ref, bins, density=True, alpha=0.5, label="reference (held-out)")
        if measure in reference.training_measures:
            ax.hist(reference.training_measures[measure], bins, density=True, histtype="step", label="training")
        ax.hist(live, bins, density=True, alpha=0.5, label="live window")
        test = tests.get(measure)
        flag = " DRIFT" if test and test["drifted"] else ""
        ax.set_title(f"{measure}" + (f" (KS {test['statistic']:.2f}){flag}" if test else ""))
    axes.flat[0].legend(fontsize=8)
    ax = axes.flat[6]
    bins = np.linspace(-0.5, 1.0, 61)
    ax.hist(reference.impostor, bins, density=True, alpha=0.4, label="reference impostor")
    ax.hist(reference.genuine, bins, density=True, alpha=0.4, label="reference genuine")
    ax.hist(_pair_scores(window.embeddings), bins, density=True, histtype="step", label="live pairs")
    for far, cut in reference.thresholds.items():
        if cut is not None:
            ax.axvline(cut, linestyle="--", linewidth=1, color="k")
            ax.text(cut, ax.get_ylim()[1] * 0.9, far, rotation=90, fontsize=7)
    ax.set_title("scores")
    ax.legend(fontsize=7)
    ax = axes.flat[7]
    embedding = tests.get("embeddings")
    ax.axis("off")
    lines = [f"version {window.version}: {result['verdict']}", f"{window.photos} photos, {window.faces} faces"]
    if embedding:
        lines.append(f"MMD^2 {embedding['statistic']:.4f}, p {embedding['p_value']:.1e}")
    ax.text(0, 1, "\n".join(lines + result["reasons"]), va="top", fontsize=9, wrap=True)
    fig.suptitle(f"Drift check: live window vs the reference of version {window.version}")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
