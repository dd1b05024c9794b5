"""Triton python-backend model: runs ``model.onnx`` (same folder) with ONNX Runtime, batching every request.

Copied into each published version as ``model.py`` when ``publish.backend: python``. Tensors cross the
stub boundary through DLPack (torch) rather than ``as_numpy()`` / ``pb_utils.Tensor(ndarray)``: the stub's
numpy bindings predate numpy 2 and silently read and write wrong memory with it (measured: corrupted inputs,
empty outputs), while DLPack is ABI-stable.
"""

import json
import os
import site
import sys

# The stub embeds Python with an isolated configuration that ignores PYTHONPATH; honour it here so the
# server's environment (e.g. a virtualenv with onnxruntime) is importable.
for _entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    if _entry and _entry not in sys.path:
        site.addsitedir(_entry)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch.utils.dlpack  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.input_name, self.output_name = config["input"][0]["name"], config["output"][0]["name"]
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        options = ort.SessionOptions()
        # Idle ONNX Runtime threads spin by default, taking cores from the server's other models (the photo-in
        # model's detectors) between requests.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    def execute(self, requests):
        batches = [torch.utils.dlpack.from_dlpack(pb_utils.get_input_tensor_by_name(r, self.input_name).to_dlpack())
                   .numpy() for r in requests]
        # One ONNX Runtime call for everything Triton's dynamic batcher grouped together.
        embeddings = self.session.run(None, {self.input_name: np.concatenate(batches)})[0]
        responses, start = [], 0
        for batch in batches:
            part = torch.from_numpy(np.ascontiguousarray(embeddings[start:start + len(batch)], dtype=np.float32))
            tensor = pb_utils.Tensor.from_dlpack(self.output_name, torch.utils.dlpack.to_dlpack(part))
            responses.append(pb_utils.InferenceResponse(output_tensors=[tensor]))
            start += len(batch)
        return responses
