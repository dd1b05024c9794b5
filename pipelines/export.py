"""DVC stage ``export``: trained backbone -> ``model.onnx`` (+ optional FP16), proven equal on real faces; or an
imported ``.onnx`` passed through as it is, to evaluate, gate, quantize and serve a pretrained model untrained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import onnx
import torch

from components.evaluation.embedders import OnnxEmbedder, TorchEmbedder
from components.export import INPUT, OUTPUT, agreement, export_onnx, to_fp16
from components.export.faces import sample_faces
from components.export.onnx_export import check_contract
from components.io.atomic import atomic_dir
from components.io.checksums import sha256_file
from components.models.loading import load_backbone
from components.models.onnx_backbone import embedding_size
from pipelines.common import timed, write_report
from pipelines.params import Params

STAGE = "export"


def served_as_imported(model: Path, out: Path, fp16: bool) -> dict[str, Any]:
    """An ``.onnx`` already in the served contract (the import_model stage's) passed through untrained: checked,
    copied byte for byte; ``start`` names it, with the import's record (source, SHA-256, licence) when it has
    one beside it, so the version's lineage says it was served as imported."""
    check_contract(onnx.load(str(model), load_external_data=False), str(model))
    shutil.copyfile(model, out / "model.onnx")
    record = model.with_suffix(".json")
    start = {"init_from": str(model), "trained": False} | (json.loads(record.read_text()) if record.is_file() else
                                                           {"sha256": sha256_file(model)})
    report: dict[str, Any] = {"export": {"copied": True}, "trained": False, "start": start}
    if fp16:
        to_fp16(out / "model.onnx", out / "model.fp16.onnx")
    config = {"backbone": "imported", "embedding_size": embedding_size(model), "input_size": [112, 112],
              "normalisation": "(rgb / 127.5) - 1", "start": start, "input": INPUT, "output": OUTPUT,
              "input_layout": "NCHW float32 RGB"}
    (out / "model.json").write_text(json.dumps(config, indent=2) + "\n")
    return report


def run(params: Params) -> dict[str, Any]:
    p = params.export
    report: dict[str, Any] = {"model": str(p.model)}
    if Path(p.model).suffix == ".onnx":
        with timed(report), atomic_dir(p.out_dir) as tmp:
            report |= served_as_imported(Path(p.model), tmp, p.fp16)
            report["sha256"] = {f.name: sha256_file(f) for f in sorted(tmp.glob("*.onnx"))}
        write_report(STAGE, report)
        return report
    with timed(report), atomic_dir(p.out_dir) as tmp:
        backbone, config = load_backbone(p.model)
        faces = sample_faces(params.pack.out_dir, p.parity_faces, seed=0)
        report["export"] = export_onnx(backbone, tmp / "model.onnx", p.opset, p.simplify)
        reference = TorchEmbedder(backbone, int(config["embedding_size"]))(faces)
        report["parity"] = agreement(reference, OnnxEmbedder(tmp / "model.onnx")(faces))
        if report["parity"]["min_cosine"] < p.min_cosine:
            raise RuntimeError(f"{p.model}: ONNX output differs from PyTorch (min cosine "
                               f"{report['parity']['min_cosine']} < export.min_cosine {p.min_cosine})")
        if p.fp16:
            to_fp16(tmp / "model.onnx", tmp / "model.fp16.onnx")
            report["parity_fp16"] = agreement(reference, OnnxEmbedder(tmp / "model.fp16.onnx")(faces))
        serving = config | {"input": INPUT, "output": OUTPUT, "input_layout": "NCHW float32 RGB",
                            "opset": report["export"]["opset"], "torch": torch.__version__}
        (tmp / "model.json").write_text(json.dumps(serving, indent=2) + "\n")
        report["sha256"] = {f.name: sha256_file(f) for f in sorted(tmp.glob("*.onnx"))}
    write_report(STAGE, report)
    return report
