"""What the photo-in model saw, as Prometheus metrics on Triton's own endpoint (port 8002, ``/metrics``).

Triton counts requests and latency per model; what a face service needs besides is what the photos were: how
many had no face or several, why photos were refused, and the quality of the faces it embedded, in the measures
quality_filter trained on. The python backend's custom metrics (``pb_utils.MetricFamily``) put them next to
Triton's ``nv_*`` metrics; ``faceforge-pipeline``'s ``model.py`` records every answered photo here. Every series
carries ``version``, the registered model version whose embedder answered, so two versions loaded side by side
during a promotion are told apart. docs/monitoring.md says what each means and what to do when its alert fires.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from components.serving.photo import PhotoFace

PREFIX = "faceforge_"
# Bucket bounds around quality_filter's thresholds (min_blur 20, brightness 30..225, max_yaw 0.45, max_pitch 0.6,
# min_interocular 16, min_score 0.6): a shift across a threshold moves counts between buckets.
QUALITY_BUCKETS: dict[str, tuple[float, ...]] = {
    "blur": (5, 10, 20, 40, 80, 160, 320, 640, 1280),
    "brightness": (20, 30, 50, 70, 90, 110, 130, 150, 170, 190, 225, 240),
    "yaw": (0.05, 0.1, 0.15, 0.2, 0.3, 0.45, 0.6, 0.8),
    "pitch": (0.05, 0.1, 0.2, 0.3, 0.45, 0.6, 0.8, 1.0),
    "interocular": (8, 16, 24, 32, 48, 64, 96, 128, 192, 256),
    "det_score": (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99),
}
QUALITY_HELP = {
    "blur": "variance of the Laplacian of the aligned face (low = soft); quality_filter.min_blur",
    "brightness": "mean grey level of the aligned face, 0..255; quality_filter.min/max_brightness",
    "yaw": "lateral nose offset / eye distance, 0 = frontal; quality_filter.max_yaw",
    "pitch": "relative change of the nose height ratio, 0 = frontal; quality_filter.max_pitch",
    "interocular": "eye distance in the photo's pixels (face size); quality_filter.min_interocular",
    "det_score": "the detector's score of the embedded face; quality_filter.min_score",
}


def faces_bucket(count: int) -> str:
    """``faces`` label of a decoded photo: "0", "1" or "2+" faces above the detector's threshold."""
    return str(count) if count < 2 else "2+"


class PhotoMetrics:
    """The model's metric families, created once per model instance (Triton merges same-named families)."""

    def __init__(self, pb_utils: Any, version: str) -> None:
        family = pb_utils.MetricFamily

        def counter(name: str, description: str) -> Any:
            return family(name=PREFIX + name, description=description, kind=family.COUNTER)

        self.version = version
        # Held for the model's life: a family garbage-collected before its metrics makes every update fail.
        self._families = {
            "requests": counter("photo_requests_total", "inference requests to the photo-in model"),
            "status": counter("photos_total", "photos answered, by status: ok, no_face, bad_image, align_failed"),
            "faces": counter("photo_faces_total", "decoded photos by faces found above the detector's threshold: "
                                                  "0, 1, 2+"),
            "reason": counter("photo_rejects_total", "photos not embedded, by rejected.csv reason code"),
            **{name: family(name=f"{PREFIX}face_{name}", description=QUALITY_HELP[name], kind=family.HISTOGRAM)
               for name in QUALITY_BUCKETS}}
        self._requests = self._families["requests"].Metric(labels={"version": version})
        self._quality = {name: self._families[name].Metric(labels={"version": version}, buckets=list(bounds))
                         for name, bounds in QUALITY_BUCKETS.items()}
        self._series: dict[tuple[str, str], Any] = {}

    def _count(self, key: str, value: str) -> Any:
        """The counter of one label value, made on first use (a reason nobody sent is no series)."""
        metric = self._series.get((key, value))
        if metric is None:
            metric = self._series[(key, value)] = self._families[key].Metric(
                labels={"version": self.version, key: value})
        return metric

    def record(self, requests: int, faces: Sequence[PhotoFace]) -> None:
        """One execute's requests and every photo's answer."""
        self._requests.increment(requests)
        for face in faces:
            self._count("status", face.status).increment(1)
            if face.status != "bad_image":
                self._count("faces", faces_bucket(face.faces)).increment(1)
            if face.status != "ok":
                self._count("reason", face.reason).increment(1)
                continue
            for name, value in face.measures.items():
                self._quality[name].observe(value)
