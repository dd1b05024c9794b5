"""Face detection with 5 landmarks on onnxruntime: CenterFace (bundled) or a user's InsightFace ONNX."""

from components.detect.base import Face, FaceDetector, letterbox
from components.detect.factory import detector_fingerprint, load_detector
from components.detect.select import pick_main_face

__all__ = ["Face", "FaceDetector", "letterbox", "load_detector", "detector_fingerprint", "pick_main_face"]
