"""A trainable backbone whose architecture and weights come from an ONNX embedder (``train.backbone: onnx``).

Teams start from public models that exist only as ONNX (SFace, InsightFace's ``w600k_r50.onnx``, faceforge's own
export). onnx2torch turns such a graph into a ``torch.fx.GraphModule`` whose convolutions, BatchNorms and fully
connected layers are ordinary trainable modules, so the same training loop, DDP and export apply. What converts:
any model in the served contract (input ``input`` [N,3,112,112] in [-1, 1], output ``embedding``; the import
stage writes one, components/imports/) whose operators onnx2torch implements once the graph is brought down to
opset 17, its newest supported. SFace converts after import (its block-quantised weights are float by then);
the ``.onnx`` as shipped does not (``DequantizeLinear`` with ``block_size`` has no PyTorch converter). Constant
tensors that onnx2torch keeps as buffers (SFace's and iResNet's PReLU slopes among them) stay fixed during
training: docs/training.md.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import version_converter
from torch import nn

ONNX_BACKBONE = "onnx"
MAX_OPSET = 17  # the newest opset onnx2torch 1.5 converts


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _without_dropout(model: onnx.ModelProto) -> None:
    """Remove ``Dropout`` nodes (identity at inference, which is all an exported model's graph is for).
    onnx2torch keeps their ratio as a tensor input, which ``torch.export`` cannot trace, so a model
    that kept one would train but not export. The source's training-time dropout is not reproduced."""
    graph = model.graph
    dropouts = [n for n in graph.node if n.op_type == "Dropout"]
    for node in dropouts:
        for other in graph.node:
            other.input[:] = [node.input[0] if i == node.output[0] else i for i in other.input]
        for output in graph.output:
            if output.name == node.output[0]:
                raise ValueError("a Dropout produces the model's output; nothing to rewire it to")
        graph.node.remove(node)


def from_onnx(path: Path | str) -> nn.Module:
    """The ONNX model at ``path`` as a PyTorch module with the same weights (train mode, as any new model)."""
    from onnx2torch import convert

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (the import_model stage writes it)")
    model = onnx.load(str(path))
    _without_dropout(model)
    if _opset(model) > MAX_OPSET:
        model = version_converter.convert_version(model, MAX_OPSET)
    try:
        return convert(model)
    except NotImplementedError as exc:
        raise ValueError(f"{path}: cannot be trained in PyTorch: {exc} (onnx2torch)") from None


def embedding_size(path: Path | str) -> int:
    """The size of the model's only output, as its graph declares it."""
    graph = onnx.load(str(path), load_external_data=False).graph
    dims = graph.output[0].type.tensor_type.shape.dim
    if len(graph.output) != 1 or not dims or not dims[-1].dim_value:
        raise ValueError(f"{path}: expected one output of static size [N, D]")
    return int(dims[-1].dim_value)
