from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from components.align.similarity import ARCFACE_TEMPLATE, align_face, estimate_transform
from components.quality.filter import QualityThresholds, apply_thresholds
from components.quality.metrics import measure


def test_known_similarity_is_recovered() -> None:
    angle, scale, shift = np.deg2rad(10), 2.5, np.array([40.0, -7.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    photo_points = (ARCFACE_TEMPLATE - shift) @ np.linalg.inv(rot).T  # inverse map into a "photo"
    matrix = estimate_transform(photo_points)
    np.testing.assert_allclose(photo_points @ matrix[:, :2].T + matrix[:, 2], ARCFACE_TEMPLATE, atol=1e-9)


def test_aligned_landmarks_land_on_the_template() -> None:
    photo = np.zeros((300, 300, 3), np.uint8)
    points = ARCFACE_TEMPLATE * 2 + 30
    crop, mapped = align_face(photo, points)
    assert crop.shape == (112, 112, 3)
    np.testing.assert_allclose(mapped, ARCFACE_TEMPLATE, atol=1e-6)


def test_degenerate_landmarks_are_an_error() -> None:
    with pytest.raises(ValueError, match="degenerate"):
        estimate_transform(np.ones((5, 2)))


def test_frontal_template_has_zero_pose_and_blur_orders() -> None:
    rng = np.random.default_rng(0)
    sharp = rng.integers(0, 255, (112, 112, 3), dtype=np.uint8)
    soft = np.full((112, 112, 3), 120, np.uint8)
    q_sharp, q_soft = measure(sharp, ARCFACE_TEMPLATE), measure(soft, ARCFACE_TEMPLATE)
    assert q_sharp.yaw == pytest.approx(0, abs=0.01) and q_sharp.pitch == pytest.approx(0, abs=1e-9)
    assert q_sharp.blur > 1000 > q_soft.blur == 0
    turned = ARCFACE_TEMPLATE.copy()
    turned[2, 0] += 20
    assert measure(sharp, turned).yaw > 0.5


THRESHOLDS = QualityThresholds(min_score=0.6, min_interocular=10, min_blur=10, max_yaw=0.5, max_pitch=0.5,
                               min_brightness=20, max_brightness=230, duplicate_hamming=4,
                               min_images_per_identity=2)


def _row(identity: str, phash: str, **overrides) -> dict:
    row = dict(identity=identity, score=0.9, interocular=30.0, blur=100.0, yaw=0.1, pitch=0.1,
               brightness=120.0, phash=phash)
    row.update(overrides)
    return row


def test_filter_reasons_duplicates_and_small_identities() -> None:
    table = pd.DataFrame([
        _row("a", "0000000000000000"),
        _row("a", "0000000000000001", score=0.8),  # 1 bit away from a better face: duplicate
        _row("a", "ffffffffffffffff"),
        _row("a", "f0f0f0f0f0f0f0f0", score=0.3),
        _row("a", "0f0f0f0f0f0f0f0f", blur=1.0),
        _row("a", "00ff00ff00ff00ff", yaw=0.9),
        _row("a", "ff00ff00ff00ff00", brightness=250.0),
        _row("a", "aaaaaaaaaaaaaaaa", interocular=3.0),
        _row("b", "5555555555555555"),  # b keeps one face only: few_images
    ])
    status = apply_thresholds(table, THRESHOLDS).tolist()
    assert status == ["ok", "duplicate", "ok", "low_score", "blur", "pose", "exposure", "small_face", "few_images"]
