"""Decoder for InsightFace detection ONNX files (SCRFD ``det_*.onnx``, RetinaFace exports of the same head).

These graphs emit, per stride, a score map, box distances and landmark offsets, all flattened over the
grid with ``A`` anchors per cell. Output order is the InsightFace convention: all score tensors first,
then all box tensors, then all landmark tensors (9 outputs for strides 8/16/32, 15 for 8..128).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from components.detect.base import Face, OnnxDetector, constant_weights, letterbox, nms, to_faces

STRIDES = {9: (8, 16, 32), 15: (8, 16, 32, 64, 128)}


class InsightFaceDetector(OnnxDetector):
    def __init__(self, path: Path, input_size: int, score_threshold: float, nms_threshold: float) -> None:
        model = constant_weights(onnx.load(str(path))).SerializeToString()
        super().__init__(model, input_size, score_threshold, nms_threshold)
        n_out = len(self.session.get_outputs())
        if n_out not in STRIDES:
            raise ValueError(f"{path}: {n_out} outputs; expected 9 or 15 (InsightFace detector with 5 landmarks)")
        self.strides = STRIDES[n_out]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        canvas, scale = letterbox(rgb, self.size)
        blob = ((canvas.astype(np.float32) - 127.5) / 128.0).transpose(2, 0, 1)[None]
        outputs = self.run(blob)
        return decode_insightface(outputs, self.strides, self.size, scale, self.score_threshold,
                                  self.nms_threshold)


def _anchor_centres(size: int, stride: int, per_cell: int) -> np.ndarray:
    cells = size // stride
    ys, xs = np.mgrid[0:cells, 0:cells]
    centres = np.stack([xs, ys], axis=-1).reshape(-1, 2).astype(np.float32) * stride
    return np.repeat(centres, per_cell, axis=0)


def decode_insightface(
    outputs: list[np.ndarray], strides: tuple[int, ...], size: int, scale: float,
    score_threshold: float, nms_threshold: float,
) -> list[Face]:
    n = len(strides)
    boxes, points, scores = [], [], []
    for k, stride in enumerate(strides):
        # Batch-exported models add a leading batch axis; single-image exports do not.
        score = outputs[k].reshape(-1)
        dist = outputs[n + k].reshape(-1, 4) * stride
        kps = outputs[2 * n + k].reshape(-1, 10) * stride
        per_cell = len(score) // (size // stride) ** 2
        if per_cell < 1 or per_cell * (size // stride) ** 2 != len(score):
            raise ValueError(f"stride {stride}: {len(score)} scores do not fit a {size}x{size} input")
        centres = _anchor_centres(size, stride, per_cell)
        hit = np.nonzero(score >= score_threshold)[0]
        c = centres[hit]
        boxes.append(np.column_stack([c[:, 0] - dist[hit, 0], c[:, 1] - dist[hit, 1],
                                      c[:, 0] + dist[hit, 2], c[:, 1] + dist[hit, 3]]))
        points.append(kps[hit].reshape(-1, 5, 2) + c[:, None, :])
        scores.append(score[hit])
    all_boxes, all_points, all_scores = np.concatenate(boxes), np.concatenate(points), np.concatenate(scores)
    keep = nms(all_boxes, all_scores, score_threshold, nms_threshold)
    return to_faces(all_boxes[keep], all_points[keep], all_scores[keep], scale)
