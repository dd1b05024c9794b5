"""An InsightFace-format ONNX embedder from a file (``w600k_r50.onnx``, faceforge's own export), imported.

InsightFace's recognition models take 112x112 RGB NCHW scaled as ``(x - 127.5) / 127.5``, i.e. the served
contract's range, but name their tensors freely (``input.1``, ``683``) and often fix the batch at 1: the same
conversion as SFace's renames them, makes the batch dynamic and folds whatever constants the file carries. The
check runs the file as given in ONNX Runtime on the same real faces.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from components.imports.onnx_contract import to_contract
from components.imports.sface import check_and_record
from components.io.checksums import sha256_file

INSIGHTFACE_RANGE = (-1.0, 1.0)


def source_embeddings(path: Path, faces: np.ndarray) -> np.ndarray:
    """The file as given, one face at a time (a fixed batch of 1 is common), on uint8 NHWC RGB faces."""
    import onnxruntime as ort

    from components.align.model_input import to_input

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: to_input(face[None])})[0] for face in faces])


def import_onnx_file(path: Path, out_dir: Path, faces: np.ndarray) -> dict[str, object]:
    """``path`` in the served contract as ``out_dir/model.onnx``, checked on ``faces``, with its record."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: import_model.source not found")
    try:
        converted, conversion = to_contract(onnx.load(str(path)), INSIGHTFACE_RANGE)
    except (ValueError, onnx.checker.ValidationError) as exc:
        raise ValueError(f"{path}: not an InsightFace-format embedder: {exc}") from None
    onnx.save(converted, str(out_dir / "model.onnx"))
    lineage = {"source": str(path), "source_sha256": sha256_file(path), "licence": "as the source's owner states",
               "source_url": ""}
    return check_and_record(out_dir / "model.onnx", conversion, lineage, faces, source_embeddings(path, faces),
                            "ONNX Runtime")
