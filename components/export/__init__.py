"""Serving formats: ONNX export (FP32/FP16), INT8 quantization, and the parity numbers that justify them."""

from components.export.onnx_export import INPUT, OUTPUT, export_onnx, to_fp16
from components.export.parity import agreement
from components.export.quantize import quantize_int8

__all__ = ["INPUT", "OUTPUT", "agreement", "export_onnx", "quantize_int8", "to_fp16"]
