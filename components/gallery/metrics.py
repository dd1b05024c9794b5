"""What the gallery service answered, as Prometheus metrics on its ``/metrics`` (docs/monitoring.md).

Triton's endpoint says what the photos were (components/serving/photo_metrics.py); this one says what the
served model decided with them: verify scores, identify's best score and its lead over the second, and how
often the best match stayed under the served threshold (the unknown rate). A model that drifts shows here before
anyone complains: genuine scores sink, the unknown rate rises, the top-1 lead narrows. Every series carries
``version``, the registered version whose embedder made the probe, as Triton's series do.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Cosine similarity: fine steps where served thresholds lie (0.2..0.6), coarse elsewhere; scores under 0 count in
# the first bucket (a negative bound would make prometheus_client drop the histogram's _sum).
SCORE_BUCKETS = (0.0, 0.1, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 1.0)
GAP_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)


def version_label(model: dict[str, str]) -> str:
    """The probe's registered version; a never-registered embedder by its checksum's first 12 digits."""
    return model.get("version") or f"sha256-{model.get('sha256', '')[:12]}"


class GalleryMetrics:
    """The service's own registry: two services in one process (tests) never share counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("faceforge_gallery_requests", "gallery HTTP requests by endpoint and status code",
                                ["endpoint", "code"], registry=r)
        self.verify = Counter("faceforge_verify", "verify answers by decision at the served threshold "
                              "(accept, reject)", ["version", "decision"], registry=r)
        self.verify_score = Histogram("faceforge_verify_score", "verify: cosine score of the claimed identity's "
                                      "best template", ["version"], buckets=SCORE_BUCKETS, registry=r)
        self.identify = Counter("faceforge_identify", "identify answers: known (best match above the served "
                                "threshold) or unknown", ["version", "decision"], registry=r)
        self.top1 = Histogram("faceforge_identify_top1_score", "identify: cosine score of the best match",
                              ["version"], buckets=SCORE_BUCKETS, registry=r)
        self.gap = Histogram("faceforge_identify_top2_gap", "identify: best score minus the second identity's "
                             "(galleries of two or more people)", ["version"], buckets=GAP_BUCKETS, registry=r)
        self.threshold = Gauge("faceforge_served_threshold", "the accept threshold the last answer used",
                               ["version"], registry=r)

    def identified(self, answer: dict[str, Any]) -> None:
        version = version_label(answer["probe_version"])
        self.identify.labels(version, "known" if answer["identity"] is not None else "unknown").inc()
        scores = [m["score"] for m in answer["matches"]]
        if scores:
            self.top1.labels(version).observe(scores[0])
        if len(scores) > 1:
            self.gap.labels(version).observe(scores[0] - scores[1])
        if answer["threshold"] is not None:
            self.threshold.labels(version).set(answer["threshold"])

    def verified(self, answer: dict[str, Any]) -> None:
        version = version_label(answer["probe_version"])
        self.verify.labels(version, "accept" if answer["same"] else "reject").inc()
        self.verify_score.labels(version).observe(answer["score"])
        self.threshold.labels(version).set(answer["threshold"])

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
