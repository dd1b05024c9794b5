"""ONNX Runtime static INT8 quantization (QDQ, per-channel weights) calibrated on real aligned faces.

QDQ keeps the graph portable: ONNX Runtime fuses it into integer kernels on CPU (VNNI), and TensorRT reads
the same Q/DQ pairs as explicit-precision INT8. The first convolution (raw pixels in) and the final
embedding projection are kept in float by default, the usual choice for embedding networks: they are a tiny
share of the compute and the most sensitive to quantization error.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quant_pre_process,
    quantize_static,
)

from components.evaluation.embedders import to_input
from components.export.onnx_export import INPUT, check_contract
from components.io.atomic import atomic_path

METHODS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
           "percentile": CalibrationMethod.Percentile}


class FaceCalibrationReader(CalibrationDataReader):
    """Feeds uint8 faces to the calibrator in the model's input layout, in equal batches.

    ONNX Runtime's histogram calibrators stack the collected batches, so a short last batch breaks them:
    the remainder beyond a whole number of batches is left out (``used`` says how many faces were fed).
    """

    def __init__(self, faces: np.ndarray, batch: int = 16) -> None:
        batch = min(batch, len(faces))
        self.used = len(faces) // batch * batch
        self._batches: Iterator[np.ndarray] = (faces[i:i + batch] for i in range(0, self.used, batch))

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT: to_input(batch)}


def _edge_nodes(model: onnx.ModelProto) -> list[str]:
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    heads = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    return convs[:1] + heads[-1:]


def quantize_int8(fp32_path: Path, out: Path, faces: np.ndarray,
                  method: Literal["minmax", "entropy", "percentile"] = "percentile", per_channel: bool = True,
                  keep_edges_float: bool = True, quant_format: Literal["qdq", "qoperator"] = "qdq",
                  reduce_range: bool = False) -> dict[str, object]:
    """``quant_format``: QDQ pairs (portable, TensorRT reads them) or ONNX Runtime's fused QOperator ops;
    ``reduce_range``: 7-bit weights, which avoids int16 overflow on CPUs without VNNI."""
    if len(faces) == 0:
        raise ValueError("the calibration set is empty: INT8 ranges must come from real faces")
    if not Path(fp32_path).is_file():
        raise FileNotFoundError(f"{fp32_path}: FP32 ONNX model not found (run the export stage)")
    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared))  # shape inference + graph fusions (BN into Conv)
        exclude = _edge_nodes(onnx.load(str(prepared))) if keep_edges_float else []
        with atomic_path(out) as target:
            reader = FaceCalibrationReader(faces)
            quantize_static(str(prepared), str(target), reader,
                            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                            per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=METHODS[method], nodes_to_exclude=exclude)
            quantized = onnx.load(str(target))
            onnx.checker.check_model(quantized)
            check_contract(quantized, str(out))
    return {"method": method, "per_channel": per_channel, "format": quant_format, "reduce_range": reduce_range,
            "calibration_faces": reader.used, "float_nodes": exclude,
            "quantized_ops": sum(n.op_type in ("QuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
                                               "ConvInteger") for n in quantized.graph.node)}
