"""The degradations behind the hard held-out set (and training augmentation): each does what its name says to a
real face, moves landmarks only when it moves the face, and the same seed gives the same image."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from components.align.similarity import ARCFACE_TEMPLATE
from components.augment.degrade import DEGRADATIONS, degrade
from components.sample.orl import load_orl_face


@pytest.fixture(scope="module")
def face() -> np.ndarray:
    return cv2.cvtColor(cv2.resize(load_orl_face(5, 1), (112, 112)), cv2.COLOR_GRAY2RGB)


def _sharpness(rgb: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


@pytest.mark.parametrize("name", list(DEGRADATIONS))
def test_each_degradation_changes_the_face_and_keeps_its_format(face: np.ndarray, name: str) -> None:
    out, lmk = DEGRADATIONS[name](np.random.default_rng(0), face, ARCFACE_TEMPLATE.copy())
    assert out.shape == face.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - face).mean() > 1.0, name
    if name == "rotation":  # the face turned: landmarks turned with it, distances kept
        assert not np.allclose(lmk, ARCFACE_TEMPLATE)
        np.testing.assert_allclose(np.linalg.norm(lmk[1] - lmk[0]),
                                   np.linalg.norm(ARCFACE_TEMPLATE[1] - ARCFACE_TEMPLATE[0]), rtol=1e-6)
    else:
        np.testing.assert_array_equal(lmk, ARCFACE_TEMPLATE)
    if name in ("low_resolution", "blur"):
        assert _sharpness(out) < 0.5 * _sharpness(face)


def test_degrade_is_seeded_and_applies_distinct_kinds_in_order(face: np.ndarray) -> None:
    first = degrade(np.random.default_rng([7, 3]), face, ARCFACE_TEMPLATE.copy())
    again = degrade(np.random.default_rng([7, 3]), face, ARCFACE_TEMPLATE.copy())
    assert np.array_equal(first[0], again[0]) and first[2] == again[2]
    names = first[2]
    assert len(set(names)) == 2 and names == [n for n in DEGRADATIONS if n in names]


def test_training_augmentation_degrades_the_asked_fraction_reproducibly(tmp_path) -> None:  # noqa: ANN001
    from components.recordio.dataset import FaceRecordDataset
    from tests.training_data import write_tiny_faces

    root = write_tiny_faces(tmp_path / "packed", classes=4, per_class=10)
    clean = FaceRecordDataset(root, random_flip=False)
    augmented = FaceRecordDataset(root, random_flip=False, seed=0, degrade_fraction=0.5)
    changed = [not np.array_equal(augmented[i][0].numpy(), clean[i][0].numpy()) for i in range(len(clean))]
    assert 0.3 < np.mean(changed) < 0.7
    again = FaceRecordDataset(root, random_flip=False, seed=0, degrade_fraction=0.5)
    assert all(np.array_equal(again[i][0].numpy(), augmented[i][0].numpy()) for i in range(len(clean)))
    augmented.set_epoch(1)  # another epoch, other draws
    assert any(not np.array_equal(augmented[i][0].numpy(), again[i][0].numpy()) for i in range(len(clean)))
