"""DVC stage ``export``: trained backbone -> ``model.onnx`` (+ optional FP16), proven equal on real faces."""

from __future__ import annotations

import json
from typing import Any

import torch

from components.evaluation.embedders import OnnxEmbedder, TorchEmbedder
from components.export import INPUT, OUTPUT, agreement, export_onnx, to_fp16
from components.export.faces import sample_faces
from components.io.atomic import atomic_dir
from components.io.checksums import sha256_file
from components.models.loading import load_backbone
from pipelines.common import timed, write_report
from pipelines.params import Params

STAGE = "export"


def run(params: Params) -> dict[str, Any]:
    p = params.export
    report: dict[str, Any] = {"model": str(p.model)}
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
