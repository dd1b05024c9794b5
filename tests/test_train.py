"""Training loop: bad inputs fail before the first update; non-finite losses skip, then stop. (Ray Train
surviving a lost node and a killed driver, to the same weights: tests/test_ray_cluster.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from components.training.config import TrainConfig
from components.training.loop import TrainingInputError, train_worker
from components.training.sessions import LocalSession
from tests.training_data import write_tiny_faces


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_faces(tmp_path_factory.mktemp("faces") / "packed", classes=6, per_class=8)


def _cfg(data: Path, tmp: Path, **overrides) -> TrainConfig:
    base = dict(data_dir=str(data), out_dir=str(tmp), backbone="mbf", embedding_size=32, batch_size=4,
                max_steps=6, checkpoint_every=2, log_every=1, loader_workers=0, lr=0.05, num_workers=2,
                sample_rate=0.5, max_failures=2)
    return TrainConfig(**(base | overrides))


def test_single_process_training_reduces_loss_and_reports(tmp_path: Path, data: Path) -> None:
    session = LocalSession(tmp_path / "ckpt")
    result = train_worker(_cfg(data, tmp_path, max_steps=12, sample_rate=1.0), session)
    losses = [h["loss"] for h in result["history"]]
    assert result["step"] == 12 and len(losses) == 12
    assert min(losses[-3:]) < losses[0]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir())[-1] == "checkpoint_00000012"


@pytest.mark.parametrize(("problem", "message"), [
    ("property", "says 9 classes, train.rec holds 6"),
    ("accumulation", "not divisible by train.grad_accumulation 3"),
    ("batch", "exceeds the 48 images"),
])
def test_bad_inputs_fail_before_training(tmp_path: Path, data: Path, problem: str, message: str) -> None:
    cfg = _cfg(data, tmp_path)
    if problem == "property":
        copy = tmp_path / "copy"
        copy.mkdir()
        for name in ("train.rec", "train.idx"):
            (copy / name).write_bytes((data / name).read_bytes())
        (copy / "property").write_text("9,112,112\n")
        cfg = _cfg(copy, tmp_path)
    elif problem == "accumulation":
        cfg = _cfg(data, tmp_path, grad_accumulation=3)
    else:
        cfg = _cfg(data, tmp_path, batch_size=64)
    with pytest.raises(TrainingInputError, match=message):
        train_worker(cfg, LocalSession(tmp_path / "ckpt"))


def test_empty_dataset_is_refused(tmp_path: Path, data: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train.rec").write_bytes(b"")
    (empty / "train.idx").write_text("")
    (empty / "property").write_text("2,112,112\n")
    with pytest.raises(TrainingInputError, match="no images"):
        train_worker(_cfg(empty, tmp_path), LocalSession(tmp_path / "ckpt"))
    # (labels >= num_classes are refused by PartialFC on the first forward: tests/test_partial_fc.py)


def test_non_finite_losses_skip_then_stop(tmp_path: Path, data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from components.heads import PartialFC

    monkeypatch.setattr(PartialFC, "forward", lambda self, emb, labels: emb.sum() * float("nan"))
    with pytest.raises(FloatingPointError, match="2 consecutive non-finite losses"):
        train_worker(_cfg(data, tmp_path, nonfinite_limit=2, num_workers=1), LocalSession(tmp_path / "a"))
    result = train_worker(_cfg(data, tmp_path, nonfinite_limit=10, num_workers=1, max_steps=3),
                          LocalSession(tmp_path / "b"))
    assert result["skipped_steps"] == 3 and result["step"] == 3


def test_infra_rayjob_runs_the_train_stage() -> None:
    import yaml

    spec = yaml.safe_load((Path(__file__).parents[1] / "infra" / "ray" / "rayjob.yaml").read_text())
    assert spec["kind"] == "RayJob" and "faceforge train" in spec["spec"]["entrypoint"]
    workers = spec["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" in workers["resources"]["limits"]
