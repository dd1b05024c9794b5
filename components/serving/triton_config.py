"""``config.pbtxt`` generated from the ONNX graph itself and validated by Triton's own protobuf schema.

Names, dtypes and dims are read from the model file, never typed by hand, so the config cannot drift from
the model. Building the message with tritonclient's ``model_config_pb2`` and parsing the rendered text back
means an unknown or misspelt field fails here, at publish time, not when Triton loads the repository.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import onnx
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

_DTYPES = {onnx.TensorProto.FLOAT: mc.TYPE_FP32, onnx.TensorProto.FLOAT16: mc.TYPE_FP16,
           onnx.TensorProto.INT8: mc.TYPE_INT8, onnx.TensorProto.UINT8: mc.TYPE_UINT8,
           onnx.TensorProto.INT32: mc.TYPE_INT32, onnx.TensorProto.INT64: mc.TYPE_INT64}


@dataclass(frozen=True)
class ServingOptions:
    backend: Literal["onnxruntime", "python"] = "onnxruntime"
    max_batch_size: int = 64
    preferred_batch_sizes: tuple[int, ...] = (8, 16, 32)
    max_queue_delay_us: int = 2000
    instance_kind: Literal["cpu", "gpu"] = "cpu"
    instance_count: int = 1
    tensorrt: bool = False
    tensorrt_precision: Literal["FP32", "FP16"] = "FP16"
    lineage: dict[str, str] = field(default_factory=dict)


def _tensor(value: onnx.ValueInfoProto, batched: bool, source: str) -> tuple[int, list[int]]:
    tensor = value.type.tensor_type
    if tensor.elem_type not in _DTYPES:
        raise ValueError(f"{source}: {value.name} has ONNX dtype {tensor.elem_type}, not servable here")
    dims = [d.dim_value if d.dim_value > 0 else -1 for d in tensor.shape.dim]
    if batched:
        if not dims or dims[0] != -1:
            raise ValueError(f"{source}: {value.name} needs a dynamic first (batch) axis for max_batch_size > 0")
        dims = dims[1:]
    return _DTYPES[tensor.elem_type], dims


def build_config(onnx_path: Path, name: str, served_versions: list[int], options: ServingOptions) -> mc.ModelConfig:
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    batched = options.max_batch_size > 0
    config = mc.ModelConfig(name=name, backend=options.backend, max_batch_size=options.max_batch_size)
    if options.backend == "onnxruntime":
        config.platform = "onnxruntime_onnx"
    initializers = {i.name for i in graph.initializer}
    for value in graph.input:
        if value.name in initializers:
            continue
        dtype, dims = _tensor(value, batched, str(onnx_path))
        config.input.add(name=value.name, data_type=dtype, dims=dims)
    for value in graph.output:
        dtype, dims = _tensor(value, batched, str(onnx_path))
        config.output.add(name=value.name, data_type=dtype, dims=dims)
    if batched:
        sizes = [s for s in options.preferred_batch_sizes if s <= options.max_batch_size]
        config.dynamic_batching.preferred_batch_size.extend(sizes)
        config.dynamic_batching.max_queue_delay_microseconds = options.max_queue_delay_us
    kind = mc.ModelInstanceGroup.KIND_GPU if options.instance_kind == "gpu" else mc.ModelInstanceGroup.KIND_CPU
    config.instance_group.add(kind=kind, count=options.instance_count)
    config.version_policy.specific.versions.extend(served_versions)
    if options.tensorrt:
        accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = options.tensorrt_precision
    for key, value in options.lineage.items():
        config.parameters[key].string_value = str(value)
    return config


def render(config: mc.ModelConfig) -> str:
    text = text_format.MessageToString(config)
    parse(text, f"generated config for {config.name}")  # round trip: what Triton reads is what we built
    return text


def parse(text: str, source: str) -> mc.ModelConfig:
    """Parse ``config.pbtxt`` text strictly; an unknown or misspelt field is a ValueError naming it."""
    config = mc.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ValueError(f"{source}: not a valid Triton model config: {exc}") from None
    return config


def with_served_versions(text: str, versions: list[int], source: str) -> str:
    """Same config, serving exactly ``versions`` (how publish and rollback switch versions)."""
    config = parse(text, source)
    config.version_policy.Clear()
    config.version_policy.specific.versions.extend(versions)
    return render(config)


def with_parameters(text: str, parameters: dict[str, str], source: str) -> str:
    """Same config, with exactly these ``parameters`` (the lineage of the version it serves)."""
    config = parse(text, source)
    config.ClearField("parameters")
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return render(config)


def served_versions(text: str, source: str) -> list[int]:
    policy = parse(text, source).version_policy
    return list(policy.specific.versions) if policy.HasField("specific") else []
