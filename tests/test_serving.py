"""[E] Triton repository: generated config, versions and rollback (local and S3 on moto's server), and a
real Triton server (the one in the nvidia-pytriton wheel) loading and answering what was published."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from components.evaluation.embedders import OnnxEmbedder, to_input
from components.evaluation.verification import load_bin
from components.export import export_onnx
from components.io.checksums import sha256_file
from components.models import get_model
from components.recordio.dataset import FaceRecordDataset
from components.serving import repository as repo_mod
from components.serving.lineage import Lineage
from components.serving.repository import (
    check_model_name,
    complete_versions,
    publish_onnx,
    publish_version,
    rollback,
    served,
    version_files,
)
from components.serving.store import LocalStore, StoreError, open_store
from components.serving.triton_config import ServingOptions, build_config, parse, render, with_served_versions
from components.serving.triton_server import TritonError, TritonServer
from components.serving.validation import infra_validate
from components.training.batchnorm import recalibrate_batchnorm
from faceforge.cli import app
from pipelines.publish import push
from tests.training_data import write_tiny_faces

pytestmark = pytest.mark.slow  # a heavy module: scheduled among the first (tests/conftest.py)

NAME = "embedder"
PYTHON = ServingOptions(backend="python", max_batch_size=16, preferred_batch_sizes=(4, 8))


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serving")
    packed = write_tiny_faces(root / "packed", classes=3, per_class=6)
    torch.manual_seed(0)
    model = get_model("mbf", 128)
    recalibrate_batchnorm(model, FaceRecordDataset(packed, random_flip=False), samples=18, batch_size=6)
    export_onnx(model, root / "model.onnx")
    return root / "model.onnx"


def _config(onnx_model: Path, versions: list[int], options: ServingOptions = PYTHON) -> str:
    return render(build_config(onnx_model, NAME, versions, options))


def test_config_is_generated_from_the_graph_and_validated(onnx_model: Path) -> None:
    lineage = {"git_revision": "abc", "metrics": '{"tar_at_far_1e-4": 0.9}'}
    options = ServingOptions(instance_kind="gpu", instance_count=2, tensorrt=True, lineage=lineage)
    config = parse(_config(onnx_model, [3], options), "test")
    assert (config.platform, config.backend, config.max_batch_size) == ("onnxruntime_onnx", "onnxruntime", 64)
    assert [(i.name, list(i.dims)) for i in config.input] == [("input", [3, 112, 112])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("embedding", [128])]
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16, 32]
    assert config.instance_group[0].count == 2 and config.instance_group[0].kind == 1  # KIND_GPU
    assert config.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    assert config.parameters["git_revision"].string_value == "abc"
    assert list(config.version_policy.specific.versions) == [3]
    switched = parse(with_served_versions(_config(onnx_model, [3], options), [1], "t"), "t")
    assert list(switched.version_policy.specific.versions) == [1]
    with pytest.raises(ValueError, match="not a valid Triton model config.*max_batch_sise"):
        parse('name: "x"\nmax_batch_sise: 8\n', "misspelt.pbtxt")


def test_local_versions_grow_rollback_and_interrupted_publish(onnx_model: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalStore(tmp_path / "repo")
    files = version_files(onnx_model, "python")
    for expected in (1, 2):
        version = publish_version(store, NAME, files, lambda v: _config(onnx_model, [v]), {"run": "r"})
        assert version == expected and served(store, NAME) == [expected]
    manifest = json.loads((tmp_path / "repo" / NAME / "2" / "faceforge.json").read_text())
    assert set(manifest["sha256"]) == {"model.onnx", "model.py"} and manifest["run"] == "r"
    assert rollback(store, NAME) == 1 and served(store, NAME) == [1]
    assert rollback(store, NAME, to=2) == 2 and complete_versions(store, NAME) == [1, 2]
    with pytest.raises(ValueError, match="version 7 does not exist"):
        rollback(store, NAME, to=7)

    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "repo").rglob("*"))
    real_upload = LocalStore.upload

    def flaky(self: LocalStore, key: str, source: Path) -> None:
        if key.endswith("model.py"):
            raise OSError("connection reset while uploading")
        real_upload(self, key, source)

    monkeypatch.setattr(LocalStore, "upload", flaky)
    with pytest.raises(OSError, match="connection reset"):
        publish_version(store, NAME, files, lambda v: _config(onnx_model, [v]), {})
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "repo").rglob("*")) == before
    assert served(store, NAME) == [2]


@pytest.mark.parametrize("bad", ["a/b", "..", "../up", "", "x/../y"])
def test_model_names_that_escape_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="is not allowed"):
        check_model_name(bad)


def test_s3_publish_and_rollback(onnx_model: Path, s3, tmp_path: Path, prefect_api: None) -> None:
    target = "s3://models/triton"
    lineage = Lineage(model_sha256=sha256_file(onnx_model), git_revision="abc")
    first = push(open_store(target), NAME, onnx_model, PYTHON, lineage, None)
    second = push(open_store(target), NAME, onnx_model, PYTHON, lineage, None)
    assert (first, second) == ((1, None), (2, None))
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="models")["Contents"])
    assert f"triton/{NAME}/config.pbtxt" in keys and f"triton/{NAME}/2/model.onnx" in keys
    config = s3.get_object(Bucket="models", Key=f"triton/{NAME}/config.pbtxt")["Body"].read().decode()
    assert list(parse(config, "s3").version_policy.specific.versions) == [2]

    (tmp_path / "params.yaml").write_text(f"publish:\n  model_name: {NAME}\n  pipeline_name: null\n")
    result = CliRunner().invoke(app, ["rollback", "--to", "1", "--serving-repository", target,
                                      "--workspace", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert served(open_store(target), NAME) == [1]
    assert len(s3.list_objects_v2(Bucket="models")["Contents"]) == len(keys)  # nothing deleted

    with pytest.raises(StoreError, match="bucket 'missing' is not usable"):
        open_store("s3://missing/triton")
    result = CliRunner().invoke(app, ["rollback", "--serving-repository", "s3://missing/x", "--workspace",
                                      str(tmp_path)])
    assert result.exit_code == 1 and "bucket 'missing' is not usable" in result.output


def test_s3_refused_credentials_are_a_clear_error(s3, monkeypatch: pytest.MonkeyPatch) -> None:
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # moto now checks keys like AWS
    with pytest.raises(StoreError, match=r"s3://models/triton: bucket 'models' is not usable \(403"):
        open_store("s3://models/triton")


def test_real_triton_serves_the_repository(onnx_model: Path, eval_sets: Path, tmp_path: Path) -> None:
    faces = to_input(load_bin(eval_sets / "orl_holdout.bin").images[:20])
    reference = OnnxEmbedder(onnx_model).session.run(None, {"input": faces})[0]
    result = infra_validate(onnx_model, NAME, PYTHON, faces, reference, tmp_path)
    assert result["passed"] and result["max_abs_diff_http"] <= 1e-5 and result["max_abs_diff_grpc"] <= 1e-5


def test_triton_refusal_fails_with_tritons_message(onnx_model: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    publish_onnx(LocalStore(repo), NAME, onnx_model, PYTHON, {})
    config = repo / NAME / "config.pbtxt"
    config.write_text(config.read_text().replace('name: "embedding"', 'name: "embeddings"'))
    (repo / NAME / "1" / "model.py").write_text("raise ImportError('model.py is broken on purpose')\n")
    with pytest.raises(TritonError, match="broken on purpose"), TritonServer(repo):
        pass


def test_publish_stage_validates_the_candidate(onnx_model: Path, workdir: Path) -> None:
    packed = write_tiny_faces(workdir / "packed", classes=2, per_class=4)
    shutil.copy(Path(__file__).parents[1] / "params.yaml", workdir / "params.yaml")
    args = ["publish", "--params", str(workdir / "params.yaml"), "--set", f"publish.model={onnx_model}",
            "--set", f"pack.out_dir={packed}", "--set", "publish.validation_faces=6",
            "--set", "publish.pipeline_name=null"]  # the photo-in model: tests/test_photo_serving.py
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((workdir / "reports" / "publish.json").read_text())
    validation = report["infra_validation"]
    assert validation["passed"] and validation["loaded_backend"] == "python"  # what the bundled Triton can load
    assert validation["published_backend"] == "onnxruntime" and not validation["published_config_loaded"]
    candidate = parse((workdir / "data" / "publish" / "repository" / "faceforge-embedder" / "config.pbtxt")
                      .read_text(), "candidate")
    assert candidate.backend == "onnxruntime"
    assert candidate.parameters["model_sha256"].string_value == sha256_file(onnx_model)
    # Only what DVC's cache can see: a restored or skipped stage is never stale about a run it did not know.
    assert "mlflow_run_id" not in candidate.parameters and report["lineage"]["mlflow_run_id"] is None

    result = CliRunner().invoke(app, [*args[:3], "--set", "publish.model_name=../escape"])
    assert result.exit_code == 2 and "publish.model_name" in result.output
    result = CliRunner().invoke(app, [*args[:3], "--set", f"publish.model={workdir / 'none.onnx'}"])
    assert result.exit_code == 1 and "none.onnx: model to publish not found" in result.output


def test_checksum_mismatch_leaves_no_version(onnx_model: Path, tmp_path: Path) -> None:
    """A stored object that does not match what was sent is caught before the version becomes visible."""

    class Corrupting(LocalStore):
        def sha256(self, key: str) -> str:
            return "0" * 64

    store = Corrupting(tmp_path / "r")
    with pytest.raises(StoreError, match="stored checksum"):
        repo_mod.publish_version(store, NAME, version_files(onnx_model, "onnxruntime"),
                                 lambda v: _config(onnx_model, [v], replace(PYTHON, backend="onnxruntime")), {})
    assert complete_versions(store, NAME) == [] and not (tmp_path / "r" / NAME / "1").exists()
