"""[L] Warm retraining: a run continues from a registered version's train output, pinned by DVC md5 (a versioned
input), keeps the centres of the identities that version knew, starts new ones at their class mean and drops
removed ones; the registered version names its parent. Real ORL faces; the registry is MLflow on SQLite."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import onnx
import pytest
import torch
import yaml
from torch.nn.functional import normalize

from components.models.loading import load_backbone
from components.recordio.dataset import FaceRecordDataset
from components.serving.lineage import describe_origin
from components.training import loop
from components.training.centres import carried_centres
from components.training.checkpoint import TRAINER, all_centres
from components.training.config import TrainConfig
from components.training.sessions import LocalSession
from flows.warm_start import lineage_tags, plan
from pipelines.params import load_params
from pipelines.train import carry_centres
from tests.test_approval import _onnx
from tests.training_data import watching_session, write_tiny_faces

pytestmark = pytest.mark.slow  # a heavy module: scheduled among the first (tests/conftest.py)

REPO = Path(__file__).parents[1]
NAME = "faceforge-embedder"


@pytest.fixture(scope="module")
def champion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A train output as the train stage writes it, trained on ORL subjects 1-6 (``s01`` .. ``s06``)."""
    root = tmp_path_factory.mktemp("champion")
    packed = write_tiny_faces(root / "packed", classes=6, per_class=6)
    cfg = TrainConfig(data_dir=str(packed), out_dir=str(root), backbone="mbf", embedding_size=32, batch_size=8,
                      max_steps=3, lr=0.05, loader_workers=0, num_workers=1, sample_rate=1.0, checkpoint_every=3,
                      log_every=1)
    session = LocalSession(root / "ckpt")
    loop.train_worker(cfg, session)
    out = root / "train"
    shutil.copytree(root / "ckpt" / "checkpoint_00000003", out / "checkpoint")
    trainer = torch.load(out / "checkpoint" / TRAINER, weights_only=False)
    torch.save(trainer["backbone"], out / "backbone.pth")
    (out / "model.json").write_text(json.dumps({"backbone": "mbf", "embedding_size": 32, "num_classes": 6}))
    shutil.copy(packed / "identities.csv", out / "identities.csv")
    return out


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The next run's data: s01 removed, s07 added (ORL subjects 2-7)."""
    return write_tiny_faces(tmp_path_factory.mktemp("next") / "packed", classes=6, per_class=6, first_subject=2)


def test_centres_are_matched_by_name_new_ones_are_marked_and_removed_ones_dropped() -> None:
    old = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    centres, known = carried_centres(old, ["a", "b", "c"], ["b", "d", "a"])
    assert known.tolist() == [True, False, True]
    assert torch.equal(centres[0], old[1]) and torch.equal(centres[2], old[0]) and not centres[1].any()
    with pytest.raises(ValueError, match="2 identity names for 3 class centres"):
        carried_centres(old, ["a", "b"], ["a"])


def test_a_warm_start_carries_known_centres_and_starts_new_identities_at_their_mean(
        tmp_path: Path, champion: Path, packed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counts = carry_centres(champion, packed, tmp_path / "warm_centres.pt")
    assert counts == {"carried_identities": 5, "new_identities": 1, "dropped_identities": 1}
    cfg = TrainConfig(data_dir=str(packed), out_dir=str(tmp_path), backbone="mbf", embedding_size=32,
                      init_from=str(champion), warm_centres=str(tmp_path / "warm_centres.pt"), batch_size=8,
                      max_steps=1, loader_workers=0, num_workers=1, sample_rate=1.0, checkpoint_every=1)
    session = watching_session(monkeypatch, tmp_path / "ckpt")
    loop.train_worker(cfg, session)

    # the backbone is the champion's, and s02..s06 (labels 0-4 now, 1-5 before) keep the champion's centres
    champion_backbone, _ = load_backbone(champion)
    assert all(torch.equal(v, champion_backbone.state_dict()[k]) for k, v in session.start_state.items())
    old = all_centres(champion / "checkpoint")
    torch.testing.assert_close(session.start_centres[:5], old[1:6], rtol=0, atol=0)
    # s07, new, starts at its normalised mean embedding under that backbone
    faces = FaceRecordDataset(packed, random_flip=False)
    new = torch.stack([faces[i][0] for i in range(len(faces)) if faces.label(i) == 5])
    with torch.no_grad():
        mean = normalize(normalize(champion_backbone(new)).mean(0, keepdim=True))[0]
    torch.testing.assert_close(session.start_centres[5], mean, atol=1e-5, rtol=1e-5)
    assert len(session.start_centres) == 6  # s01's centre is gone


def test_compatible_training_adds_the_start_classifier_frozen_and_a_resume_rebuilds_it(
        tmp_path: Path, champion: Path, packed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """BCT's influence loss: the embeddings are also classified by the classifier the warm start begins with
    (the champion's centres, the new person's mean), which no step moves; a resume rebuilds the same one."""
    carry_centres(champion, packed, tmp_path / "warm_centres.pt")
    settings = {"data_dir": str(packed), "out_dir": str(tmp_path), "backbone": "mbf", "embedding_size": 32,
                "init_from": str(champion), "warm_centres": str(tmp_path / "warm_centres.pt"), "batch_size": 8,
                "max_steps": 2, "lr": 0.05, "loader_workers": 0, "num_workers": 1, "sample_rate": 1.0,
                "checkpoint_every": 1, "log_every": 1}
    frozen: list[torch.nn.Module] = []
    build = loop.frozen_classifier
    monkeypatch.setattr(loop, "frozen_classifier", lambda head: frozen.append(build(head)) or frozen[-1])
    plain = LocalSession(tmp_path / "plain")
    loop.train_worker(TrainConfig(**settings), plain)
    assert not frozen  # unconstrained unless asked
    session = watching_session(monkeypatch, tmp_path / "compatible")
    loop.train_worker(TrainConfig(**settings, compatible_weight=1.0), session)
    influence = frozen[-1]
    torch.testing.assert_close(influence.weight, session.start_centres, rtol=0, atol=0)  # untouched by 2 steps
    assert influence.weight.grad is None and not torch.equal(session.head.weight, session.start_centres)
    # at step 1 the frozen classifier is the head itself: the loss is twice the margin loss
    first, compatible_first = plain.reports[0]["loss"], session.reports[0]["loss"]
    assert compatible_first == pytest.approx(2 * first, rel=1e-5)

    resumed = LocalSession(tmp_path / "resumed", resume_from=tmp_path / "compatible" / "checkpoint_00000001")
    loop.train_worker(TrainConfig(**settings, compatible_weight=1.0), resumed)
    torch.testing.assert_close(frozen[-1].weight, influence.weight, rtol=0, atol=0)
    assert resumed.reports[-1]["loss"] == pytest.approx(session.reports[-1]["loss"], rel=1e-5)


def _register_champion(project: Path, champion: Path) -> str:
    """Version 1 as a retrain registers it: its run holds dvc/dvc.lock (train output md5) and train/model.json."""
    subprocess.run([sys.executable, "-m", "dvc", "add", "-q", "data/train"], cwd=project, check=True)
    md5 = yaml.safe_load((project / "data" / "train.dvc").read_text())["outs"][0]["md5"]
    lock = yaml.safe_dump({"schema": "2.0", "stages": {"train": {"cmd": "faceforge train", "outs": [
        {"path": "data/train", "md5": md5, "nfiles": 6}]}}})
    client = mlflow.MlflowClient()
    with mlflow.start_run():
        mlflow.log_text(lock, "dvc/dvc.lock")
        mlflow.log_artifact(str(champion / "model.json"), "train")
        info = mlflow.onnx.log_model(onnx.load(str(_onnx(project / "m.onnx", 1.0))), name="model")
    version = mlflow.register_model(info.model_uri, NAME, tags={
        "dvc_lock_sha256": hashlib.sha256(lock.encode()).hexdigest(), "warm_generation": "0"}).version
    client.set_registered_model_alias(NAME, "champion", version)
    return md5


def test_warm_start_from_the_champion_is_pinned_copied_from_dvc_and_trained_with_its_parent_named(
        tmp_path: Path, champion: Path, packed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    text = (REPO / "params.yaml").read_text()  # edited as a person would: comments stay
    for old, new in (("backbone: onnx ", "backbone: mbf "), ("embedding_size: 128 ", "embedding_size: 32 "),
                     ("init_from: data/import/model.onnx ", "init_from: null "),
                     ("teacher: data/import/model.onnx ", "teacher: null ")):
        assert old in text
        text = text.replace(old, new)
    (project / "params.yaml").write_text(text)
    shutil.copytree(champion, project / "data" / "train")
    shutil.copytree(packed, project / "data" / "packed")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(project)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment("faceforge")
    md5 = _register_champion(project, champion)
    shutil.rmtree(project / "data" / "train")  # the workspace moved on; DVC's cache still holds version 1's output
    faceforge = str(Path(sys.executable).parent / "faceforge")
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri)

    pinned = subprocess.run([faceforge, "continue-from", "champion"], cwd=project, env=env, capture_output=True,
                            text=True, timeout=300)
    assert pinned.returncode == 0, pinned.stderr
    text = (project / "params.yaml").read_text()
    assert "# written with train_md5 by `faceforge continue-from`" in text  # the user's comments are kept
    warm = load_params(project / "params.yaml").warm_start
    assert (warm.version, warm.train_md5) == (1, md5)

    copied = subprocess.run([faceforge, "warm_start"], cwd=project, env=env, capture_output=True, text=True,
                            timeout=300)
    assert copied.returncode == 0, copied.stderr
    for path in champion.rglob("*"):
        if path.is_file():
            assert (project / "data" / "warm_start" / path.relative_to(champion)).read_bytes() == path.read_bytes()

    trained = subprocess.run([faceforge, "train", "--set", "train.num_workers=2",
                              "--set", "train.batch_size=4", "--set", "train.degrade_fraction=0",
                              "--set", "train.loader_workers=0",
                              "--set", "train.sample_rate=1.0", "--set", "warm_start.epochs=1",
                              "--set", f"train.storage_path={tmp_path / 'ray'}"],
                             cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    report = json.loads((project / "reports" / "train.json").read_text())
    start = report["start"]
    assert (start["version"], start["train_md5"], start["init_from"]) == (1, md5, "data/warm_start")
    assert (start["carried_identities"], start["new_identities"], start["dropped_identities"]) == (5, 1, 1)
    assert describe_origin(start) == (f"faceforge-embedder version 1, warm (train output {md5}: 5 identities' "
                                      "centres carried, 1 new, 1 dropped; trained to stay comparable with its "
                                      "templates (BCT, weight 1))")  # faceforge lineage, the model card
    assert report["steps"] == 36 // (4 * 2)  # one epoch of the new data: warm_start.epochs
    # params.yaml's freeze_batchnorm keeps version 1's BatchNorm statistics, and its precise BN does not replace them
    assert (report["freeze_batchnorm"], report["bn_recalibration_samples"]) == (True, 0)
    before, after = (torch.load(d / "backbone.pth", weights_only=True) for d in (champion, project / "data" / "train"))
    statistics = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert statistics and all(torch.equal(before[k], after[k]) for k in statistics)
    assert (project / "data" / "train" / "identities.csv").read_text() == (packed / "identities.csv").read_text()

    # the registered version names its parent; the next plan knows when a full retrain is due
    client = mlflow.MlflowClient()
    params = load_params(project / "params.yaml")
    assert lineage_tags(client, params, start) == {"parent_version": "1", "warm_generation": "1"}
    assert plan(client, params, full_retrain=False).version == 1
    assert "asked for" in plan(client, params, full_retrain=True).reason
    client.set_model_version_tag(NAME, "1", "warm_generation", "3")
    assert "full_retrain_every is 4" in plan(client, params, full_retrain=False).reason
    client.set_model_version_tag(NAME, "1", "warm_generation", "0")
    other = load_params(project / "params.yaml", ["train.embedding_size=64"])
    assert "train asks for mbf 64-d" in plan(client, other, full_retrain=False).reason
    unpinned = subprocess.run([faceforge, "continue-from", "none"], cwd=project, env=env, capture_output=True,
                              text=True, timeout=300)
    assert unpinned.returncode == 0, unpinned.stderr
    assert load_params(project / "params.yaml").warm_start.version is None
    assert np.isfinite(report["final_loss"])


def test_a_version_trained_in_another_clone_is_fetched_from_the_dvc_remote_at_its_run_commit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scheduled retrain on a machine that did not train the champion: its train output comes from the DVC
    remote at the version's run commit (flows/warm_start.ensure_cached), not from the registry."""
    from flows.warm_start import Start, ensure_cached
    from pipelines.warm_start import cached_directory

    trainer = tmp_path / "trainer"
    trainer.mkdir()

    def run(cwd: Path, *args: str) -> None:
        subprocess.run(args, cwd=cwd, check=True, capture_output=True)

    run(trainer, "git", "init", "-q")
    run(trainer, "git", "config", "user.email", "ci@example.com")
    run(trainer, "git", "config", "user.name", "ci")
    run(trainer, sys.executable, "-m", "dvc", "init", "-q")
    run(trainer, sys.executable, "-m", "dvc", "remote", "add", "-d", "store", str(tmp_path / "remote"))
    write = ("import pathlib; p = pathlib.Path('data/train'); p.mkdir(parents=True); "
             "(p / 'backbone.pth').write_bytes(b'weights'); (p / 'model.json').write_text('{}')")
    (trainer / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {"train": {"cmd": f'"{sys.executable}" -c "{write}"', "outs": ["data/train"]}}}))
    run(trainer, sys.executable, "-m", "dvc", "repro", "-q")
    run(trainer, sys.executable, "-m", "dvc", "push", "-q")
    run(trainer, "git", "add", "-A")
    run(trainer, "git", "commit", "-q", "-m", "version 1's run")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=trainer, capture_output=True, text=True,
                            check=True).stdout.strip()
    md5 = yaml.safe_load((trainer / "dvc.lock").read_text())["stages"]["train"]["outs"][0]["md5"]

    team = tmp_path / "team"  # a clone: the remote's address, none of the trainer's cache
    run(tmp_path, "git", "clone", "-q", str(trainer), str(team))
    monkeypatch.chdir(team)
    assert cached_directory(md5)[1] is None
    with pytest.raises(FileNotFoundError, match=f"train output \\({md5}\\) is not in DVC's cache and the version "
                                                "names no run commit"):
        ensure_cached(Start(1, md5, "champion"))
    ensure_cached(Start(1, md5, "champion", commit=commit))
    _, entries, missing = cached_directory(md5)
    assert entries is not None and sorted(e["relpath"] for e in entries) == ["backbone.pth", "model.json"]
    assert missing == []
