"""Pick and build the detector named by params; fingerprint it for the content-addressed cache."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import onnx

from components.detect.base import GRAPH_PREPARATION, FaceDetector
from components.detect.centerface import CenterFaceDetector, bundled_centerface_path
from components.detect.insightface import InsightFaceDetector


@dataclass(frozen=True)
class DetectorConfig:
    model_path: Path | None
    model_kind: Literal["auto", "centerface", "insightface"]
    input_size: int
    score_threshold: float
    nms_threshold: float

    @property
    def resolved_path(self) -> Path:
        path = self.model_path or bundled_centerface_path()
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path}: detector model not found (params detect.model_path)")
        return Path(path)


def detector_kind(config: DetectorConfig) -> str:
    """The decoder family of the configured model: ``centerface`` or ``insightface``."""
    if config.model_kind != "auto":
        return config.model_kind
    if config.model_path is None:
        return "centerface"
    # Reading the graph header is enough to tell the two families apart; no session is built twice.
    n_out = len(onnx.load(str(config.resolved_path), load_external_data=False).graph.output)
    return "centerface" if n_out == 4 else "insightface"


def load_detector(config: DetectorConfig) -> FaceDetector:
    cls = CenterFaceDetector if detector_kind(config) == "centerface" else InsightFaceDetector
    return cls(config.resolved_path, config.input_size, config.score_threshold, config.nms_threshold)


def detector_fingerprint(config: DetectorConfig) -> str:
    """Changes whenever a cached detection could differ: model bytes, how its graph is prepared, or any
    decoding setting."""
    digest = hashlib.sha256(config.resolved_path.read_bytes())
    digest.update(repr((config.model_kind, config.input_size, config.score_threshold,
                        config.nms_threshold, GRAPH_PREPARATION)).encode())
    return digest.hexdigest()[:16]
