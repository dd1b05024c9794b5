"""Backbone -> ONNX for serving: dynamic batch, fixed names, checked, simplified only when provably equal.

Contract of the file (Triton's config is generated from it later, so the names are fixed here):
input ``input`` float32 [batch, 3, 112, 112], RGB scaled to [-1, 1]; output ``embedding`` float32 [batch, D].
"""

from __future__ import annotations

import contextlib
import io
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper

from components.io.atomic import atomic_path

INPUT, OUTPUT = "input", "embedding"


def _prelu_slopes_for_tensorrt(model: onnx.ModelProto) -> int:
    """Give every PRelu slope shape [C, 1, 1]; returns how many were changed.

    A per-channel slope stored as [C] broadcasts against NCHW along W under ONNX (numpy) rules: ONNX Runtime
    tolerates the exporter's intent, TensorRT rejects or misreads it -- the classic iResNet/MobileFaceNet
    export failure. [C, 1, 1] (or [1, C, 1, 1]) means the same thing to every runtime.
    """
    inits = {init.name: init for init in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "PRelu" or node.input[1] not in inits:
            continue
        init = inits[node.input[1]]
        if len(init.dims) == 1 and init.dims[0] > 1:
            slope = numpy_helper.to_array(init).reshape(-1, 1, 1)
            init.CopyFrom(numpy_helper.from_array(slope, init.name))
            changed += 1
    return changed


def _torch_export(model: torch.nn.Module, opset: int) -> onnx.ModelProto:
    example = torch.zeros(2, 3, 112, 112)
    batch = torch.export.Dim("batch", min=1, max=4096)
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet), torch.no_grad():  # the exporter prints progress per phase
        program = torch.onnx.export(model.eval(), (example,), input_names=[INPUT], output_names=[OUTPUT],
                                    dynamic_shapes=({0: batch},), opset_version=opset, dynamo=True, verbose=False)
    return program.model_proto


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT: x})[0]


def check_contract(model: onnx.ModelProto, source: str) -> None:
    """Names, dtypes and a symbolic batch axis, as publish and Triton rely on them."""
    inputs, outputs = model.graph.input, model.graph.output
    if [i.name for i in inputs] != [INPUT] or [o.name for o in outputs] != [OUTPUT]:
        raise ValueError(f"{source}: expected input {INPUT!r} and output {OUTPUT!r}, got "
                         f"{[i.name for i in inputs]} -> {[o.name for o in outputs]}")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or not dims[0].dim_param or [d.dim_value for d in dims[1:]] != [3, 112, 112]:
        raise ValueError(f"{source}: input must be [batch, 3, 112, 112] with a dynamic batch axis")


def export_onnx(model: torch.nn.Module, out: Path, opset: int = 18, simplify: bool = True) -> dict[str, Any]:
    """Write ``out`` atomically; returns what was done (for the report)."""
    proto = _torch_export(model, opset)
    info: dict[str, Any] = {"opset": max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                            "prelu_slopes_reshaped": _prelu_slopes_for_tensorrt(proto), "simplified": False}
    if simplify:
        import onnxslim  # deferred: only export needs it

        slim = onnxslim.slim(proto)
        # Keep the simplified graph only if it computes the same function on a probe batch.
        probe = np.random.default_rng(0).uniform(-1, 1, (3, 3, 112, 112)).astype(np.float32)
        a, b = _run(proto, probe), _run(slim, probe)
        if np.allclose(a, b, rtol=1e-4, atol=1e-5 * max(1.0, float(np.abs(a).max()))):
            info["nodes_before_simplify"] = len(proto.graph.node)
            proto, info["simplified"] = slim, True
    onnx.checker.check_model(proto, full_check=True)
    check_contract(proto, str(out))
    info["nodes"] = dict(Counter(n.op_type for n in proto.graph.node))
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return info


def to_fp16(src: Path, out: Path) -> None:
    """FP16 weights and compute for GPU serving; inputs/outputs stay float32 so clients need no change."""
    import onnx_ir
    from onnxruntime.transformers.float16 import convert_float_to_float16

    half = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True)
    # The converter appends its input casts after their consumers; ONNX requires topological order.
    graph = onnx_ir.from_proto(half)
    graph.graph.sort()
    half = onnx_ir.to_proto(graph)
    onnx.checker.check_model(half, full_check=True)
    with atomic_path(out) as tmp:
        onnx.save(half, str(tmp))
