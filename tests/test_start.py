"""[L] Starting from a pretrained model: the weights a run starts from equal the source before step 1, class
centres start at each class's normalised mean embedding, and a frozen backbone does not move."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from components.imports.sface import SFACE, check_faces, import_packaged
from components.models import get_model
from components.models.loading import load_start
from components.recordio.dataset import FaceRecordDataset
from components.training import loop
from components.training.config import TrainConfig
from components.training.sessions import LocalSession
from tests.training_data import watching_session, write_tiny_faces


@pytest.fixture(scope="module")
def sface(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("import")
    import_packaged(SFACE, root, check_faces())
    return root / "model.onnx"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_faces(tmp_path_factory.mktemp("faces") / "packed", classes=4, per_class=6)


def _ort(path: Path, images: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": images.astype(np.float32)})[0]


def test_an_onnx_start_equals_its_source_and_a_wrong_size_is_named(sface: Path) -> None:
    model = load_start("onnx", 128, sface).eval()
    images = np.random.default_rng(0).uniform(-1, 1, (3, 3, 112, 112)).astype(np.float32)
    with torch.no_grad():
        ours = model(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(ours, _ort(sface, images), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="model.onnx: embeds to 128 dimensions, train.embedding_size is 512"):
        load_start("onnx", 512, sface)
    with pytest.raises(ValueError, match="needs train.backbone onnx"):
        load_start("mbf", 128, sface)


def test_a_backbone_pth_start_equals_its_file(tmp_path: Path) -> None:
    """arcface_torch saves ``backbone.pth`` from the bare module; a DDP-wrapped save has ``module.`` keys."""
    torch.manual_seed(3)
    source = get_model("mbf", 64).state_dict()
    torch.save({f"module.{k}": v for k, v in source.items()}, tmp_path / "backbone.pth")
    started = load_start("mbf", 64, tmp_path / "backbone.pth").state_dict()
    assert started.keys() == source.keys() and all(torch.equal(started[k], source[k]) for k in source)
    with pytest.raises(ValueError, match=r"backbone.pth: weights do not match train.backbone r18"):
        load_start("r18", 64, tmp_path / "backbone.pth")


def test_centres_start_at_the_normalised_class_means_and_a_frozen_backbone_stays(
        tmp_path: Path, data: Path, sface: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig(data_dir=str(data), out_dir=str(tmp_path), backbone="onnx", embedding_size=128,
                      init_from=str(sface), batch_size=8, max_steps=2, freeze_backbone_steps=2, lr=0.05,
                      loader_workers=0, num_workers=1, sample_rate=1.0, checkpoint_every=2, log_every=1)
    session = watching_session(monkeypatch, tmp_path / "ckpt")
    result = loop.train_worker(cfg, session)
    assert result["step"] == 2

    # the backbone as training received it computes what the imported file computes
    faces = FaceRecordDataset(data, random_flip=False)
    images = np.stack([faces[i][0].numpy() for i in range(len(faces))])
    labels = np.array([faces.label(i) for i in range(len(faces))])
    reference = _ort(sface, images)
    fresh = load_start("onnx", 128, sface)
    fresh.load_state_dict(session.start_state)
    with torch.no_grad():
        np.testing.assert_allclose(fresh.eval()(torch.from_numpy(images)).numpy(), reference, atol=1e-4, rtol=1e-4)

    # centres: mean of the L2-normalised embeddings of each class, normalised (ONNX Runtime, independently)
    unit = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    means = np.stack([unit[labels == c].mean(0) for c in range(4)])
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    np.testing.assert_allclose(session.start_centres.numpy(), means, atol=1e-4)

    # freeze_backbone_steps 2: after two steps only the centres (and BatchNorm statistics) moved
    trained = dict(session.backbone.named_parameters())
    assert all(torch.equal(p, session.start_state[name]) for name, p in trained.items())
    assert not torch.equal(session.head.weight.detach(), session.start_centres)
    assert json.dumps(result["history"])  # plain values, as reported


def test_frozen_batchnorm_keeps_the_starts_statistics_while_the_backbone_learns(
        tmp_path: Path, data: Path, sface: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig(data_dir=str(data), out_dir=str(tmp_path), backbone="onnx", embedding_size=128,
                      init_from=str(sface), batch_size=8, max_steps=2, lr=0.05, freeze_batchnorm=True,
                      degrade_fraction=0.5, loader_workers=0, num_workers=1, sample_rate=1.0, checkpoint_every=2)
    session = watching_session(monkeypatch, tmp_path / "ckpt")
    loop.train_worker(cfg, session)
    buffers = dict(session.backbone.named_buffers())
    statistics = [name for name in buffers if name.endswith(("running_mean", "running_var"))]
    assert len(statistics) == 2 * 29  # SFace's 29 BatchNorms
    assert all(torch.equal(buffers[name], session.start_state[name]) for name in statistics)
    moved = [name for name, p in session.backbone.named_parameters() if not torch.equal(p, session.start_state[name])]
    assert any(name.endswith("weight") for name in moved) and len(moved) > 29  # convolutions and BN scale/shift

    unfrozen = TrainConfig(**{**cfg.__dict__, "freeze_batchnorm": False, "out_dir": str(tmp_path / "b")})
    session = watching_session(monkeypatch, tmp_path / "ckpt-b")
    loop.train_worker(unfrozen, session)
    buffers = dict(session.backbone.named_buffers())
    assert not any(torch.equal(buffers[name], session.start_state[name]) for name in statistics)


def test_distillation_caches_the_teacher_once_and_the_student_moves_towards_it(
        tmp_path: Path, data: Path, sface: Path) -> None:
    from components.training.checkpoint import TRAINER
    from components.training.distill import Distillation, WithTeacherTargets, teacher_targets

    faces = FaceRecordDataset(data, random_flip=False)
    targets = teacher_targets(sface, faces, batch_size=7)
    images = np.stack([faces[i][0].numpy() for i in range(len(faces))])
    for flip, batch in ((0, images), (1, images[..., ::-1])):
        expected = _ort(sface, np.ascontiguousarray(batch))
        np.testing.assert_allclose(targets[:, flip], expected / np.linalg.norm(expected, axis=1, keepdims=True),
                                   atol=1e-5)
    seeded = FaceRecordDataset(data, seed=0)
    paired = WithTeacherTargets(seeded, targets)
    for i in range(len(seeded)):  # the mirrored crop is taught the mirrored embedding
        assert np.array_equal(paired[i][2].numpy(), targets[i, int(seeded.flipped(i))])
    np.save(tmp_path / "targets.npy", targets)

    cfg = TrainConfig(data_dir=str(data), out_dir=str(tmp_path), backbone="mbf", embedding_size=32,
                      teacher_targets=str(tmp_path / "targets.npy"), distill_weight=20.0, batch_size=8, max_steps=12,
                      lr=0.1, loader_workers=0, num_workers=1, sample_rate=1.0, checkpoint_every=12, log_every=4)

    def agreement(backbone_state: dict, distill_state: dict) -> float:
        student = get_model("mbf", 32)
        student.load_state_dict(backbone_state)
        distill = Distillation(32, 128, 1.0)
        distill.load_state_dict(distill_state)
        with torch.no_grad():
            projected = distill.projection(student.train()(torch.from_numpy(images)))  # batch statistics:
            # 12 steps leave the running averages far from them (what precise BN fixes in the train stage)
        return float(torch.nn.functional.cosine_similarity(projected, torch.from_numpy(targets[:, 0])).mean())

    torch.manual_seed(cfg.seed)
    before = agreement(get_model("mbf", 32).state_dict(), Distillation(32, 128, 1.0).state_dict())
    loop.train_worker(cfg, LocalSession(tmp_path / "ckpt"))
    trainer = torch.load(tmp_path / "ckpt" / "checkpoint_00000012" / TRAINER, weights_only=False)
    assert set(trainer["extra"]["distill"]) == {"projection.weight"}  # 32 -> 128: a learned projection
    assert agreement(trainer["backbone"], trainer["extra"]["distill"]) > before + 0.2


def test_a_trained_onnx_backbone_folder_loads_and_exports_to_what_it_computes(tmp_path: Path, sface: Path) -> None:
    """The train stage's folder for ``backbone: onnx`` (architecture.onnx + backbone.pth + model.json) loads
    for eval and exports through torch.export, computing the same embeddings."""
    from components.export import export_onnx
    from components.models.loading import load_backbone

    model = load_start("onnx", 128, sface)
    with torch.no_grad():
        model.get_parameter("conv_1_conv2d.weight").mul_(1.01)  # "trained": no longer the file's weights
    torch.save(model.state_dict(), tmp_path / "backbone.pth")
    (tmp_path / "architecture.onnx").write_bytes(sface.read_bytes())
    (tmp_path / "model.json").write_text(json.dumps({"backbone": "onnx", "embedding_size": 128,
                                                     "architecture": "architecture.onnx"}))
    loaded, _ = load_backbone(tmp_path)
    export_onnx(loaded, tmp_path / "exported.onnx", 17, True)
    images = np.random.default_rng(1).uniform(-1, 1, (4, 3, 112, 112)).astype(np.float32)
    with torch.no_grad():
        ours = loaded(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(_ort(tmp_path / "exported.onnx", images), ours, atol=1e-4, rtol=1e-4)
    assert np.abs(ours - _ort(sface, images)).max() > 1e-3  # the trained weights, not the architecture file's
