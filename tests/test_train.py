"""Training loop: bad inputs fail before the first update; Ray Train survives a killed worker exactly."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from components.training.checkpoint import META, TRAINER
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


def _final_backbone(run_dir: Path) -> dict[str, torch.Tensor]:
    checkpoints = sorted(p for p in run_dir.rglob("checkpoint_*") if (p / TRAINER).exists())
    return torch.load(checkpoints[-1] / TRAINER, weights_only=False)["backbone"]


def _complete(checkpoint: Path) -> bool:
    """Both workers' files are in storage (a head shard appearing alone means the report is still in flight)."""
    return all((checkpoint / name).exists() for name in (TRAINER, META, "head_rank0.pt", "head_rank1.pt"))


def _kill_a_worker_after_first_checkpoint(storage: Path, killed: list[int], stop: threading.Event) -> None:
    while not stop.is_set():
        if any(_complete(p) for p in storage.rglob("checkpoint_*")):
            for proc in psutil.process_iter(["pid", "cmdline"]):
                if "RayTrainWorker" in " ".join(proc.info["cmdline"] or []):
                    proc.kill()
                    killed.append(proc.info["pid"])
                    return
        time.sleep(0.2)


def test_killed_worker_resumes_to_the_same_weights(tmp_path: Path, data: Path) -> None:
    ray = pytest.importorskip("ray")
    from components.training.ray_runner import run_on_ray

    try:
        clean = run_on_ray(_cfg(data, tmp_path), tmp_path / "clean", "clean")
        killed: list[int] = []
        stop = threading.Event()
        watcher = threading.Thread(target=_kill_a_worker_after_first_checkpoint,
                                   args=(tmp_path / "faulty", killed, stop), daemon=True)
        watcher.start()
        faulty = run_on_ray(_cfg(data, tmp_path), tmp_path / "faulty", "faulty")
        stop.set()
    finally:
        ray.shutdown()
    assert killed, "no worker was killed: the fault was not injected"
    assert clean.metrics["step"] == faulty.metrics["step"] == 6
    expected, actual = _final_backbone(tmp_path / "clean"), _final_backbone(tmp_path / "faulty")
    for key in expected:
        # CPU, same seed: the resumed run repeats the uninterrupted one up to float reassociation
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6)


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
