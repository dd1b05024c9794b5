"""What every detector returns, and the letterbox both decoders share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import onnx
import onnxruntime as ort

# How a detector graph is prepared for its session (constant_weights below). Part of the detection cache's
# fingerprint: a change here can move detections, so it must not reuse results of the previous preparation.
GRAPH_PREPARATION = "weights-as-constants"


@dataclass(frozen=True)
class Face:
    bbox: np.ndarray  # (4,) x1, y1, x2, y2 in input-image pixels
    landmarks: np.ndarray  # (5, 2): left eye, right eye, nose, left mouth corner, right mouth corner (image left first)
    score: float

    @property
    def area(self) -> float:
        return float(max(0.0, self.bbox[2] - self.bbox[0]) * max(0.0, self.bbox[3] - self.bbox[1]))


class FaceDetector(Protocol):
    def detect(self, rgb: np.ndarray) -> list[Face]: ...


def constant_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop the weights that older exporters also list as graph inputs (the bundled CenterFace: 194 of them).

    onnxruntime must treat such a weight as a value the caller may override, so it cannot fold batch norm into
    the convolutions or constant-fold around it: CenterFace ran at 120 ms per 480x480 image on one core as
    shipped, 55 ms without them, the same outputs to 1e-5.
    """
    weights = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return model


def letterbox(rgb: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize so the longest side is ``size`` and pad right/bottom to ``size``x``size``.

    A fixed square input keeps ONNX shapes static (fast, cacheable sessions); returns the scale to map
    detections back to the original image.
    """
    h, w = rgb.shape[:2]
    scale = size / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:nh, :nw] = cv2.resize(rgb, (nw, nh), interpolation=cv2.INTER_LINEAR if scale > 1 else cv2.INTER_AREA)
    return canvas, scale


def nms(boxes: np.ndarray, scores: np.ndarray, score_threshold: float, iou_threshold: float) -> np.ndarray:
    """Indices kept by non-maximum suppression (OpenCV's implementation, boxes as x1y1x2y2)."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = np.column_stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]])
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.astype(float).tolist(), score_threshold, iou_threshold)
    return np.asarray(keep, dtype=np.int64).reshape(-1)


def to_faces(boxes: np.ndarray, landmarks: np.ndarray, scores: np.ndarray, scale: float) -> list[Face]:
    order = np.argsort(-scores)
    return [
        Face(bbox=(boxes[i] / scale).astype(np.float32), landmarks=(landmarks[i] / scale).astype(np.float32),
             score=float(scores[i]))
        for i in order
    ]


class OnnxDetector:
    """One CPU onnxruntime session per process, plus the thresholds every decoder applies."""

    def __init__(self, model: str | bytes, input_size: int, score_threshold: float, nms_threshold: float) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # parallelism comes from the process pool, one session per core
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.size = input_size
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold

    def run(self, blob: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: blob})
