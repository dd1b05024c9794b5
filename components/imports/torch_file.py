"""An arcface_torch ``backbone.pth`` (its backbone name and embedding size given), imported.

arcface_torch saves a ``state_dict`` of one of its backbones (iResNet, MobileFaceNet), possibly with DDP's
``module.`` prefix. faceforge builds the same architecture (components/models), loads the weights strictly
(a wrong name or size fails naming the file), exports it to the served contract as the export stage does, and
checks the ONNX file against the PyTorch model on real faces: the imported model can then be evaluated, gated,
quantized and served as it is, or fine-tuned (``train.init_from``) like any other import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from components.align.model_input import to_input
from components.export.onnx_export import export_onnx
from components.imports.onnx_contract import Conversion
from components.imports.sface import check_and_record
from components.io.checksums import sha256_file
from components.models.loading import load_start


def import_backbone_file(path: Path, backbone: str, embedding_size: int, out_dir: Path,
                         faces: np.ndarray) -> dict[str, object]:
    """``path`` as ``out_dir/model.onnx`` in the served contract, checked on ``faces``, with its record."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: import_model.source not found")
    model = load_start(backbone, embedding_size, path).eval()
    exported = export_onnx(model, out_dir / "model.onnx")
    with torch.no_grad():
        source = model(torch.from_numpy(to_input(faces))).numpy()
    lineage = {"source": str(path), "source_sha256": sha256_file(path), "licence": "as the source's owner states",
               "source_url": "", "backbone": backbone}
    conversion = Conversion(embedding_size=embedding_size)
    record = check_and_record(out_dir / "model.onnx", conversion, lineage, faces, source, "PyTorch")
    return record | {"export": {k: v for k, v in exported.items() if k != "nodes"}}
