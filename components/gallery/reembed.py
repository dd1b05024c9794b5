"""Embedding stored crops with a model version's ONNX file, exactly as its photo-in model embeds a photo's face.

The photo-in model (components/serving/pipeline_model.py) feeds the aligned crop through
:func:`~components.align.model_input.to_input` to the embedder and L2-normalises the output, without flipping;
doing the same here makes a migrated template the template that enrolling the photo with the new version
would have made. ONNX Runtime directly: nothing between the crops and the session but the decode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from components.align.model_input import to_input


class CropEmbedder:
    def __init__(self, model: Path, threads: int = 0) -> None:
        import onnxruntime as ort

        if not Path(model).is_file():
            raise FileNotFoundError(f"{model}: ONNX model to re-embed with not found")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        out = self.session.run(None, {self.input: to_input(crops)})[0].astype(np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
