"""The numbers of [C]: ROC rule, template pooling, pair scoring, 1:N, 10-fold accuracy -- each against a
slow, obviously-correct reference written out here."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_curve

from components.evaluation.identification import identify
from components.evaluation.pairs import score_pairs
from components.evaluation.roc import decision_thresholds, rate_key, roc_points, roc_summary, split_scores
from components.evaluation.templates import pool_templates
from components.evaluation.verification import _best_threshold, kfold_accuracy
from components.training.batchnorm import recalibrate_batchnorm


def test_tar_at_far_by_hand() -> None:
    genuine = np.array([0.9, 0.8, 0.7, 0.35, 0.2])
    impostor = np.array([0.6, 0.5, 0.4, 0.4, 0.3, 0.1, 0.0, -0.1, -0.2, -0.3])
    s = roc_summary(genuine, impostor, fars=(0.05, 0.1, 0.2, 0.3, 0.5))
    assert math.isnan(s.tar_at_far[0.05])  # k = 0: below the 1/10 resolution
    assert s.tar_at_far[0.1] == pytest.approx(3 / 5)  # 1 impostor may pass (0.6): cut at 0.5
    # FAR 0.2 allows 2 impostors but 0.4 is tied with the 4th: cut at 0.4 admits only 0.6 and 0.5.
    assert s.tar_at_far[0.2] == pytest.approx(3 / 5) and s.thresholds[0.2] == pytest.approx(0.4)
    assert s.tar_at_far[0.3] == pytest.approx(3 / 5)  # 3 allowed, 0.4 tie makes it 4: still cut at 0.4
    assert s.tar_at_far[0.5] == pytest.approx(5 / 5)  # 5 allowed: cut at the 6th impostor, 0.1
    assert s.as_metrics()[rate_key("tar_at_far", 0.05)] is None


def test_decision_thresholds_by_hand() -> None:
    """What a deployment accepts above, with the impostor pairs behind it; never a guess below the resolution."""
    impostor = np.sort(np.array([0.6, 0.5, 0.4, 0.4, 0.3, 0.1, 0.0, -0.1, -0.2, -0.3]))
    t = decision_thresholds(impostor, fars=(0.05, 0.1, 0.2))
    assert t["far_5e-2"] == {"cosine": None, "impostor_pairs": 10, "impostors_above": 0}
    assert t["far_1e-1"] == {"cosine": 0.5, "impostor_pairs": 10, "impostors_above": 1}
    assert t["far_2e-1"] == {"cosine": 0.4, "impostor_pairs": 10, "impostors_above": 2}  # the tie at 0.4 stays out
    rng = np.random.default_rng(0)
    many = np.sort(rng.normal(0.0, 0.2, 100_000))
    for far, row in decision_thresholds(many).items():  # 1e-3, 1e-4, 1e-5 by default
        rate = float(far.removeprefix("far_"))
        assert row["impostors_above"] <= rate * len(many)
        assert row["cosine"] is not None and np.count_nonzero(many > row["cosine"]) == row["impostors_above"]


def test_tar_at_far_is_best_tpr_with_fpr_within_target() -> None:
    rng = np.random.default_rng(0)
    genuine = np.round(rng.normal(0.6, 0.2, 3000), 3)  # rounded: plenty of ties
    impostor = np.round(rng.normal(0.0, 0.2, 40000), 3)
    labels = np.r_[np.ones(3000), np.zeros(40000)]
    fpr, tpr, _ = roc_curve(labels, np.r_[genuine, impostor], drop_intermediate=False)
    fars = (1e-4, 1e-3, 1e-2, 1e-1)
    summary = roc_summary(genuine, impostor, fars)
    for far in fars:
        assert summary.tar_at_far[far] == pytest.approx(tpr[fpr <= far].max())
    assert summary.auc == pytest.approx(np.trapezoid(tpr, fpr), abs=1e-9)
    far, tar = roc_points(genuine, impostor)
    assert np.all(np.diff(far) > 0) and np.all(np.diff(tar) >= 0)
    for f, t in zip(far, tar, strict=True):  # every thinned point lies on the exact ROC
        assert t == pytest.approx(tpr[fpr <= f + 1e-12].max())


def test_split_scores_rejects_nan_and_one_class() -> None:
    with pytest.raises(ValueError, match="NaN"):
        split_scores(np.array([0.1, np.nan]), np.array([1, 0]))
    with pytest.raises(ValueError, match="genuine and impostor"):
        split_scores(np.array([0.1, 0.2]), np.array([1, 1]))


def _pool_reference(feats, templates, medias, weights):
    out = {}
    for t in np.unique(templates):
        media_means = []
        for m in np.unique(medias[templates == t]):
            sel = (templates == t) & (medias == m)
            media_means.append((feats[sel] * weights[sel, None]).mean(axis=0))
        v = np.mean(media_means, axis=0)
        out[t] = v / np.linalg.norm(v)
    return out


def test_pooling_matches_the_protocol_definition() -> None:
    rng = np.random.default_rng(1)
    n = 300
    feats = rng.normal(size=(n, 16)).astype(np.float32)
    templates = rng.integers(100, 140, n)
    medias = rng.integers(0, 25, n)  # media ids shared across templates: pooled within each template
    weights = rng.uniform(0.2, 1.0, n)
    ids, pooled = pool_templates(feats, templates, medias, weights)
    reference = _pool_reference(feats.astype(np.float64), templates, medias, weights)
    assert list(ids) == sorted(reference)
    for i, t in enumerate(ids):
        np.testing.assert_allclose(pooled[i], reference[t], atol=2e-6)


@pytest.mark.parametrize("n_pairs", [50, 5000])  # sparse -> row gather; dense -> blocked Gram matrix
def test_pair_scores_equal_plain_dot_products(n_pairs: int) -> None:
    rng = np.random.default_rng(2)
    feats = rng.normal(size=(300, 32)).astype(np.float32)
    i1, i2 = rng.integers(0, 300, n_pairs), rng.integers(0, 300, n_pairs)
    expected = np.einsum("ij,ij->i", feats[i1].astype(np.float64), feats[i2].astype(np.float64))
    np.testing.assert_allclose(score_pairs(feats, i1, i2, block_rows=64, chunk=17), expected, rtol=1e-5, atol=1e-5)


def test_identification_by_hand() -> None:
    gallery = np.eye(3, dtype=np.float32)  # subjects 10, 20, 30
    g_subjects = np.array([10, 20, 30])
    probes = np.array([[0.9, 0.1, 0.0], [0.6, 0.8, 0.0], [0.1, 0.0, 0.2], [0.5, 0.5, 0.7], [0.0, 0.3, 0.1]])
    probes = (probes / np.linalg.norm(probes, axis=1, keepdims=True)).astype(np.float32)
    p_subjects = np.array([10, 10, 30, 99, 98])  # probe 1: mate ranked 2nd; last two are non-mated
    m = identify(probes, p_subjects, gallery, g_subjects, ranks=(1, 2), fpirs=(0.5, 1.0))
    assert (m["n_mated"], m["n_nonmated"]) == (3, 2)
    assert m["rank1"] == pytest.approx(2 / 3) and m["rank2"] == pytest.approx(1.0)
    # Non-mated top-1 scores 0.70 and 0.95; FPIR 0.5 lets one through, so the cut is 0.70. The rank-1 mated
    # probes score 0.99 and 0.89: both pass.
    assert m["tpir_at_fpir_5e-1"] == pytest.approx(2 / 3)
    assert m["tpir_at_fpir_1e0"] == pytest.approx(2 / 3)  # threshold below everything: rank-1 hits only
    with pytest.raises(ValueError, match="expected one"):
        identify(probes, p_subjects, gallery, np.array([10, 10, 30]))


def test_best_threshold_is_exact_and_kfold_separable() -> None:
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=200), 1)
    same = rng.random(200) < 0.5
    t = _best_threshold(scores, same)
    brute = max(np.mean((scores > c) == same) for c in np.r_[scores, scores.min() - 1])
    assert np.mean((scores > t) == same) == pytest.approx(brute)
    separable = np.r_[rng.uniform(0.5, 1, 100), rng.uniform(-1, 0.4, 100)]
    accuracy, std, _ = kfold_accuracy(separable, np.r_[np.ones(100, bool), np.zeros(100, bool)], folds=10)
    assert (accuracy, std) == (1.0, 0.0)


def test_batchnorm_recalibration_uses_exact_data_statistics() -> None:
    torch.manual_seed(0)
    data = [(torch.randn(3, 4, 4) * 3 + torch.tensor([1.0, -2.0, 5.0])[:, None, None], 0) for _ in range(96)]
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    model[0].running_mean.fill_(100.0)
    assert recalibrate_batchnorm(model, data, samples=96, batch_size=32) == 96
    expected = torch.stack([x for x, _ in data]).mean(dim=(0, 2, 3))
    torch.testing.assert_close(model[0].running_mean, expected, atol=1e-4, rtol=0)
    assert not model.training
