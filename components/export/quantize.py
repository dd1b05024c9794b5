"""ONNX Runtime static INT8 quantization (QDQ, per-channel weights) calibrated on real aligned faces.

QDQ keeps the graph portable: ONNX Runtime fuses it into integer kernels on CPU (VNNI), and TensorRT reads
the same Q/DQ pairs as explicit-precision INT8. The first convolution (raw pixels in) and the final
embedding projection are kept in float by default, the usual choice for embedding networks: they are a tiny
share of the compute and the most sensitive to quantization error. PReLU is rewritten into ops that have
integer kernels before calibration (``decompose_prelu``; see ``prelu_as_integer_ops``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from onnx import helper, numpy_helper
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
    """Feeds uint8 faces to the calibrator in the model's input layout, in equal batches, one per call.

    The remainder beyond a whole number of batches is left out (``used`` says how many faces were fed).
    ONNX Runtime's histogram calibrators stack every activation of every batch fed in one call (r50: 96 MiB
    a face), which for r50 at 256 faces is more than this machine's 24 GiB; ``quantize_static`` feeds a
    reader with ``__len__``/``set_range`` one batch per call (``CalibStridedMinMax``) and merges the
    histograms. Measured on r50 with 256 faces: 4.4 GB peak and 168 s, against 10.4 GB and 197 s four
    batches per call.
    """

    def __init__(self, faces: np.ndarray, batch: int = 16) -> None:
        self._batch = min(batch, len(faces))
        self.used = len(faces) // self._batch * self._batch
        self._faces = faces[:self.used]
        self.set_range(0, len(self))

    def __len__(self) -> int:
        return self.used // self._batch

    def set_range(self, start_index: int, end_index: int) -> None:
        """Feed batches ``start_index`` to ``end_index`` (exclusive) on the next calls to ``get_next``."""
        starts = range(start_index * self._batch, min(end_index, len(self)) * self._batch, self._batch)
        self._batches: Iterator[np.ndarray] = (self._faces[i:i + self._batch] for i in starts)

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT: to_input(batch)}


def prelu_as_integer_ops(model: onnx.ModelProto) -> int:
    """Rewrite each PRelu with a constant slope ``a`` as ``a·x + (1−a)·relu(x)``, in place; returns the count.

    Why: ONNX Runtime has no integer PReLU (QLinearLeakyRelu takes one scalar slope, and the QDQ rules have
    no PRelu), so every PReLU stays a float op with a DequantizeLinear before it, a QuantizeLinear after it
    and layout transposes around the integer convolutions: about a third of r50's INT8 time (profiled,
    docs/benchmarks.md). Mul, Relu and Add all have integer kernels. The rewrite computes the same
    function: for x ≤ 0 it is ``a·x`` exactly, for x > 0 ``a·x + (1−a)·x``, ``x`` up to one float rounding.
    """
    constants = {i.name: i for i in model.graph.initializer}
    nodes, rewritten = [], 0
    for node in model.graph.node:
        if node.op_type != "PRelu" or node.input[1] not in constants:
            nodes.append(node)
            continue
        x, slope, y = node.input[0], node.input[1], node.output[0]
        name = node.name or y
        one_minus = f"{name}/one_minus_slope"
        model.graph.initializer.append(numpy_helper.from_array(
            (1 - numpy_helper.to_array(constants[slope])).astype(np.float32), one_minus))
        nodes += [helper.make_node("Mul", [x, slope], [f"{name}/slope_x"], name=f"{name}/slope_x"),
                  helper.make_node("Relu", [x], [f"{name}/relu"], name=f"{name}/relu"),
                  helper.make_node("Mul", [f"{name}/relu", one_minus], [f"{name}/relu_part"],
                                   name=f"{name}/relu_part"),
                  helper.make_node("Add", [f"{name}/slope_x", f"{name}/relu_part"], [y], name=name)]
        rewritten += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return rewritten


def _edge_nodes(model: onnx.ModelProto) -> list[str]:
    convs = [n.name for n in model.graph.node if n.op_type == "Conv"]
    heads = [n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")]
    return convs[:1] + heads[-1:]


def quantize_int8(fp32_path: Path, out: Path, faces: np.ndarray,
                  method: Literal["minmax", "entropy", "percentile"] = "percentile", per_channel: bool = True,
                  keep_edges_float: bool = True, quant_format: Literal["qdq", "qoperator"] = "qdq",
                  reduce_range: bool = False, decompose_prelu: bool = True) -> dict[str, object]:
    """``quant_format``: QDQ pairs (portable, TensorRT reads them) or ONNX Runtime's fused QOperator ops;
    ``reduce_range``: 7-bit weights, which avoids int16 overflow on CPUs without VNNI; ``decompose_prelu``:
    PReLU as integer Mul/Relu/Add (``prelu_as_integer_ops``) instead of a float island."""
    if len(faces) == 0:
        raise ValueError("the calibration set is empty: INT8 ranges must come from real faces")
    if not Path(fp32_path).is_file():
        raise FileNotFoundError(f"{fp32_path}: FP32 ONNX model not found (run the export stage)")
    with tempfile.TemporaryDirectory() as tmp:
        source, prepared = Path(fp32_path), Path(tmp) / "prepared.onnx"
        decomposed = 0
        if decompose_prelu:
            model = onnx.load(str(fp32_path))
            decomposed = prelu_as_integer_ops(model)
            source = Path(tmp) / "decomposed.onnx"
            onnx.save(model, str(source))
        quant_pre_process(str(source), str(prepared))  # shape inference + graph fusions (BN into Conv)
        exclude = _edge_nodes(onnx.load(str(prepared))) if keep_edges_float else []
        with atomic_path(out) as target:
            reader = FaceCalibrationReader(faces)
            quantize_static(str(prepared), str(target), reader,
                            quant_format=QuantFormat.QDQ if quant_format == "qdq" else QuantFormat.QOperator,
                            per_channel=per_channel, reduce_range=reduce_range, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=METHODS[method], nodes_to_exclude=exclude,
                            extra_options={"CalibStridedMinMax": 1,  # any method, despite its name
                                           # A BatchNormalization scale is [C]: its channels lie along axis 0.
                                           # ONNX Runtime's default (1) is out of range for it, so per-channel
                                           # fell back to one scale for the embedding's BN, with a warning.
                                           "QDQOpTypePerChannelSupportToAxis": {"BatchNormalization": 0}})
            quantized = onnx.load(str(target))
            onnx.checker.check_model(quantized)
            check_contract(quantized, str(out))
    return {"method": method, "per_channel": per_channel, "format": quant_format, "reduce_range": reduce_range,
            "calibration_faces": reader.used, "float_nodes": exclude, "decomposed_prelu": decomposed,
            "quantized_ops": sum(n.op_type in ("QuantizeLinear", "QLinearConv", "QLinearMatMul", "MatMulInteger",
                                               "ConvInteger") for n in quantized.graph.node)}
