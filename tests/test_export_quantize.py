"""[D] ONNX export parity and contract, FP16, INT8 quantization and its accuracy threshold, bad input."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from typer.testing import CliRunner

from components.evaluation.embedders import OnnxEmbedder, TorchEmbedder
from components.evaluation.verification import load_bin
from components.export import INPUT, OUTPUT, agreement, export_onnx, quantize_int8, to_fp16
from components.export.onnx_export import _prelu_slopes_for_tensorrt
from components.export.quantize import prelu_as_integer_ops
from components.models import get_model
from components.recordio.dataset import FaceRecordDataset
from components.training.batchnorm import recalibrate_batchnorm
from faceforge.cli import app
from tests.training_data import write_tiny_faces

pytestmark = pytest.mark.slow  # a heavy module: scheduled among the first (tests/conftest.py)

PARAMS = Path(__file__).parents[1] / "params.yaml"


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_faces(tmp_path_factory.mktemp("faces") / "packed", classes=4, per_class=8)


@pytest.fixture(scope="module")
def trained_like(packed: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded mbf whose BatchNorm statistics come from real faces, so activations have realistic ranges."""
    torch.manual_seed(0)
    model = get_model("mbf", 128)
    recalibrate_batchnorm(model, FaceRecordDataset(packed, random_flip=False), samples=32, batch_size=16)
    root = tmp_path_factory.mktemp("trained")
    torch.save(model.state_dict(), root / "backbone.pth")
    (root / "model.json").write_text(json.dumps({"backbone": "mbf", "embedding_size": 128}))
    return root


def _faces(eval_sets: Path) -> np.ndarray:
    return load_bin(eval_sets / "orl_holdout.bin").images[:48]  # real aligned faces of unseen people


def test_export_contract_and_parity_on_real_faces(trained_like: Path, eval_sets: Path, tmp_path: Path) -> None:
    model = TorchEmbedder.from_dir(trained_like)
    info = export_onnx(model.model, tmp_path / "m.onnx", opset=18, simplify=True)
    proto = onnx.load(str(tmp_path / "m.onnx"))
    onnx.checker.check_model(proto, full_check=True)
    assert info["opset"] == 18 and info["simplified"]
    assert [i.name for i in proto.graph.input] == [INPUT] and [o.name for o in proto.graph.output] == [OUTPUT]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    inits = {i.name: i for i in proto.graph.initializer}
    slopes = [inits[n.input[1]] for n in proto.graph.node if n.op_type == "PRelu"]
    assert slopes and all(len(s.dims) >= 3 and s.dims[-2:] == [1, 1] for s in slopes)  # TensorRT-safe

    faces = _faces(eval_sets)
    onnx_model = OnnxEmbedder(tmp_path / "m.onnx")
    parity = agreement(model(faces), onnx_model(faces))
    assert parity["min_cosine"] >= 0.99999, parity
    assert onnx_model(faces[:1]).shape == (1, 128) and onnx_model(faces[:5]).shape == (5, 128)  # dynamic batch

    to_fp16(tmp_path / "m.onnx", tmp_path / "m16.onnx")
    half = onnx.load(str(tmp_path / "m16.onnx"))
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in half.graph.initializer)
    assert half.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # clients unchanged
    assert agreement(model(faces), OnnxEmbedder(tmp_path / "m16.onnx")(faces))["min_cosine"] >= 0.999


def test_rank_one_prelu_slopes_are_reshaped() -> None:
    slope = numpy_helper.from_array(np.array([0.1, 0.2, 0.3], np.float32), "slope")
    graph = helper.make_graph([helper.make_node("PRelu", ["x", "slope"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 3, 4, 4])],
                              [slope])
    model = helper.make_model(graph)
    assert _prelu_slopes_for_tensorrt(model) == 1
    assert list(model.graph.initializer[0].dims) == [3, 1, 1]
    np.testing.assert_array_equal(numpy_helper.to_array(model.graph.initializer[0]).ravel(),
                                  np.array([0.1, 0.2, 0.3], np.float32))


def test_prelu_rewrite_computes_the_same_function(trained_like: Path, eval_sets: Path, tmp_path: Path) -> None:
    """The INT8 path rewrites PReLU as a·x + (1-a)·relu(x); in float that must be the model it was given."""
    export_onnx(TorchEmbedder.from_dir(trained_like).model, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    prelus = sum(n.op_type == "PRelu" for n in model.graph.node)
    assert prelus > 0 and prelu_as_integer_ops(model) == prelus
    assert not any(n.op_type == "PRelu" for n in model.graph.node)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(tmp_path / "rewritten.onnx"))
    faces = _faces(eval_sets)
    before, after = OnnxEmbedder(tmp_path / "m.onnx")(faces), OnnxEmbedder(tmp_path / "rewritten.onnx")(faces)
    np.testing.assert_allclose(after, before, rtol=0, atol=1e-5)


def test_quantize_needs_real_calibration_faces(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="calibration set is empty"):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", np.zeros((0, 112, 112, 3), np.uint8))
    with pytest.raises(FileNotFoundError, match="FP32 ONNX model not found"):
        quantize_int8(tmp_path / "m.onnx", tmp_path / "q.onnx", np.zeros((2, 112, 112, 3), np.uint8))
    assert not list(tmp_path.iterdir())


def _invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_export_and_quantize_stages(trained_like: Path, packed: Path, eval_sets: Path, workdir: Path) -> None:
    shutil.copy(PARAMS, workdir / "params.yaml")
    common = [f"pack.out_dir={packed}", f"export.model={trained_like}", "export.parity_faces=16",
              f"eval.ijbc_root={eval_sets / 'ijbc_mini'}", "eval.loader_workers=0", "eval.folds=4",
              f"eval.verification={{holdout: {eval_sets / 'orl_holdout.bin'}}}",
              "quantize.calibration_faces=24", "quantize.far=0.1",
              "quantize.method=minmax"]  # the default (percentile) calibrates in the demo; here the stage
    sets = [arg for item in common for arg in ("--set", item)]
    result = _invoke("export", "--params", workdir / "params.yaml", *sets, "--set", "export.fp16=true")
    assert result.exit_code == 0, result.output
    report = json.loads((workdir / "reports" / "export.json").read_text())
    assert report["parity"]["min_cosine"] >= 0.99999 and "parity_fp16" in report
    assert {p.name for p in (workdir / "data" / "export").iterdir()} == {"model.onnx", "model.fp16.onnx",
                                                                         "model.json"}

    loose = ["--set", "quantize.max_accuracy_drop=1.0", "--set", "quantize.max_tar_drop=1.0",
             "--set", "quantize.min_cosine=-1", "--set", "quantize.speed_seconds=0.1",
             "--set", "quantize.min_speedup=0.01"]
    result = _invoke("quantize", "--params", workdir / "params.yaml", *sets, *loose)
    assert result.exit_code == 0, result.output
    report = json.loads((workdir / "reports" / "quantize.json").read_text())
    assert report["passed"] is True and report["quantization"]["quantized_ops"] > 0
    assert report["quantization"]["decomposed_prelu"] > 0  # no PReLU left as a float op between Q/DQ nodes
    assert set(report["drop"]) == {"holdout.accuracy", "ijbc.tar_at_far_1e-1"}
    assert 0 < report["embedding_agreement"]["mean_cosine"] <= 1
    speed = report["speed"]
    assert set(speed["images_per_s"]) == {"1", "32"} and all(v["fp32"] > 0 and v["int8"] > 0
                                                             for v in speed["images_per_s"].values())
    assert speed["int8_speedup"]["32"] == round(speed["images_per_s"]["32"]["int8"]
                                                / speed["images_per_s"]["32"]["fp32"], 3)
    out = workdir / "data" / "quantize"
    int8 = out / "model.int8.onnx"
    assert report["sha256"]["int8"] == _sha(int8)
    assert not any(n.op_type == "PRelu" for n in onnx.load(str(int8)).graph.node)
    # within the accuracy limits and fast enough (a 0.01x floor): INT8 is the variant served
    assert report["serve"] == "int8" and "min_speedup 0.01" in report["serve_reasons"][0]
    assert _sha(out / "model.onnx") == _sha(int8)

    # INT8 slower than required: FP32 is served, with the measured speed-up as the reason
    result = _invoke("quantize", "--params", workdir / "params.yaml", *sets, *loose[:-1], "quantize.min_speedup=100")
    assert result.exit_code == 0, result.output
    slow = json.loads((workdir / "reports" / "quantize.json").read_text())
    assert slow["passed"] is True and slow["serve"] == "fp32"
    assert any("FP32's throughput at batch 32 (< quantize.min_speedup 100" in r for r in slow["serve_reasons"])
    assert _sha(out / "model.onnx") == _sha(workdir / "data" / "export" / "model.onnx") == slow["sha256"]["fp32"]

    # publish serves the verdict's file and says which variant it is, and why; the evaluation's decision
    # thresholds travel with it (null where the evaluation could not resolve that FAR)
    thresholds = {"far_1e-3": {"cosine": 0.31, "impostor_pairs": 25000, "impostors_above": 25},
                  "far_1e-4": {"cosine": None, "impostor_pairs": 25000, "impostors_above": 0}}
    (workdir / "reports" / "eval.json").write_text(json.dumps({"ijbc": {"tar_at_far_1e-3": 0.7,
                                                                        "thresholds": thresholds}}))
    result = _invoke("publish", "--params", workdir / "params.yaml", *sets,
                     "--set", "publish.validate_with_triton=false")
    assert result.exit_code == 0, result.output
    lineage = json.loads((workdir / "reports" / "publish.json").read_text())["lineage"]
    assert lineage["served_variant"] == "fp32" and "min_speedup 100" in lineage["served_variant_reason"]
    config = (workdir / "data" / "publish" / "repository" / "faceforge-embedder" / "config.pbtxt").read_text()
    assert 'key: "served_variant"' in config and 'string_value: "fp32"' in config
    assert lineage["thresholds"] == thresholds
    assert 'key: "threshold_far_1e-3"' in config and 'string_value: "0.31"' in config
    assert 'key: "threshold_far_1e-4"' in config and 'string_value: "null"' in config

    # INT8 beyond the accuracy limits: not a failure of the stage, FP32 is served and the report says why
    strict = ["--set", "quantize.max_accuracy_drop=-1.0", "--set", "quantize.max_tar_drop=1.0",
              "--set", "quantize.min_cosine=1.0", "--set", "quantize.speed_seconds=0.1",
              "--set", "quantize.min_speedup=0.01"]
    result = _invoke("quantize", "--params", workdir / "params.yaml", *sets, *strict)
    assert result.exit_code == 0, result.output
    failed = json.loads((workdir / "reports" / "quantize.json").read_text())
    assert failed["passed"] is False and failed["serve"] == "fp32"
    assert "quantize.max_accuracy_drop -1.0" in failed["reasons"][0] and failed["serve_reasons"] == failed["reasons"]
    cosine = failed["embedding_agreement"]["mean_cosine"]
    assert f"mean cosine to FP32's is {cosine:.4f} < quantize.min_cosine 1.0" in failed["reasons"][-1]
    assert _sha(out / "model.onnx") == failed["sha256"]["fp32"]


def test_export_refuses_mismatched_or_missing_weights(trained_like: Path, packed: Path, workdir: Path) -> None:
    shutil.copy(PARAMS, workdir / "params.yaml")
    wrong = workdir / "wrong"
    shutil.copytree(trained_like, wrong)
    (wrong / "model.json").write_text(json.dumps({"backbone": "r18", "embedding_size": 128}))
    result = _invoke("export", "--params", workdir / "params.yaml", "--set", f"export.model={wrong}",
                     "--set", f"pack.out_dir={packed}")
    assert result.exit_code == 1 and "weights do not match" in result.output and "r18" in result.output
    result = _invoke("export", "--params", workdir / "params.yaml", "--set", f"export.model={workdir / 'nope'}")
    assert result.exit_code == 1 and "nope/model.json: not found" in result.output
    assert not (workdir / "data" / "export").exists() and not (workdir / "reports" / "export.json").exists()
