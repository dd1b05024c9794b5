"""Detector decoding, checked with tiny ONNX graphs the test builds (no downloaded weights)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from components.detect import Face, pick_main_face
from components.detect.centerface import decode_centerface
from components.detect.factory import DetectorConfig, load_detector

SIZE = 64


def _constant_model(outputs: list[np.ndarray], path: Path) -> Path:
    """A graph that ignores its image and returns fixed tensors, in the InsightFace output order."""
    nodes, infos = [], []
    for i, value in enumerate(outputs):
        name = f"out{i}"
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, name)))
        infos.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, SIZE, SIZE])
    model = helper.make_model(helper.make_graph(nodes, "fake_scrfd", [image], infos),
                              opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


def _scrfd_outputs(hit_index: int, batch_axis: bool) -> list[np.ndarray]:
    scores, boxes, kps = [], [], []
    for stride in (8, 16, 32):
        n = (SIZE // stride) ** 2 * 2
        scores.append(np.zeros((n, 1), np.float32))
        boxes.append(np.zeros((n, 4), np.float32))
        kps.append(np.zeros((n, 10), np.float32))
    scores[0][hit_index] = 0.9
    boxes[0][hit_index] = [1, 1, 2, 2]
    kps[0][hit_index] = [0.5, -0.5, 1, 0, 0, 1, -1, 1, 1, 1]
    out = scores + boxes + kps
    return [o[None] for o in out] if batch_axis else out


@pytest.mark.parametrize("batch_axis", [False, True])
def test_insightface_decoding_strides_and_anchors(tmp_path: Path, batch_axis: bool) -> None:
    # stride 8, cell x=3 y=2, second anchor -> flat index (2*8+3)*2+1; anchor centre (24, 16)
    path = _constant_model(_scrfd_outputs((2 * 8 + 3) * 2 + 1, batch_axis), tmp_path / "det.onnx")
    detector = load_detector(DetectorConfig(path, "auto", SIZE, 0.5, 0.4))
    faces = detector.detect(np.zeros((SIZE, SIZE, 3), np.uint8))
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].bbox, [16, 8, 40, 32])
    np.testing.assert_allclose(faces[0].landmarks, [[28, 12], [32, 16], [24, 24], [16, 24], [32, 24]])
    assert faces[0].score == pytest.approx(0.9)


def test_insightface_boxes_scale_back_to_the_photo(tmp_path: Path) -> None:
    path = _constant_model(_scrfd_outputs((2 * 8 + 3) * 2 + 1, False), tmp_path / "det.onnx")
    detector = load_detector(DetectorConfig(path, "insightface", SIZE, 0.5, 0.4))
    faces = detector.detect(np.zeros((SIZE * 2, SIZE, 3), np.uint8))  # letterboxed at scale 0.5
    np.testing.assert_allclose(faces[0].bbox, [32, 16, 80, 64])


def test_detector_without_landmarks_is_refused(tmp_path: Path) -> None:
    path = _constant_model(_scrfd_outputs(0, False)[:6], tmp_path / "nokps.onnx")
    with pytest.raises(ValueError, match="6 outputs; expected 9 or 15"):
        load_detector(DetectorConfig(path, "insightface", SIZE, 0.5, 0.4))


def test_missing_model_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        load_detector(DetectorConfig(tmp_path / "missing.onnx", "auto", SIZE, 0.5, 0.4))


def test_centerface_decoding() -> None:
    grid = 8
    heat = np.zeros((1, 1, grid, grid), np.float32)
    heat[0, 0, 3, 5] = 0.8
    scale = np.zeros((1, 2, grid, grid), np.float32)
    scale[0, :, 3, 5] = np.log(10.0)  # box 40x40 pixels (4 * e^scale)
    offset = np.zeros((1, 2, grid, grid), np.float32)
    lms = np.zeros((1, 10, grid, grid), np.float32)
    lms[0, 0::2, 3, 5] = 0.25  # y of every landmark at a quarter of the box height
    lms[0, 1::2, 3, 5] = [0.3, 0.7, 0.5, 0.35, 0.65]
    faces = decode_centerface(heat, scale, offset, lms, scale=2.0, score_threshold=0.5, nms_threshold=0.4)
    assert len(faces) == 1
    # centre (5.5*4, 3.5*4) = (22, 14); box from (2, -6)->clipped y 0; then /2 for the letterbox scale
    np.testing.assert_allclose(faces[0].bbox, [1, 0, 21, 20], atol=1e-5)
    np.testing.assert_allclose(faces[0].landmarks[0], [(2 + 0.3 * 40) / 2, (0 + 0.25 * 40) / 2], atol=1e-5)


def test_main_face_prefers_large_and_central() -> None:
    def face(x1, y1, x2, y2):
        return Face(np.array([x1, y1, x2, y2], np.float32), np.zeros((5, 2), np.float32), 0.9)

    big_corner, mid_centre, small_centre = face(0, 0, 120, 120), face(150, 100, 250, 200), face(190, 140, 210, 160)
    assert pick_main_face([small_centre, mid_centre, big_corner], 400, 300, centre_weight=0.5) is mid_centre
    assert pick_main_face([small_centre, mid_centre, big_corner], 400, 300, centre_weight=0.0) is big_corner
    assert pick_main_face([], 400, 300, 0.5) is None
