"""Calling the served photo-in model: embed photos, verify two, identify probes against a gallery.

A thin layer over tritonclient (gRPC by default, HTTP with ``protocol="http"``) for the ``faceforge-pipeline``
contract: encoded photo bytes in; per photo an L2-normalised embedding, the face found and a status out. The
accept threshold of a verification is the one the served version was evaluated with (its ``config.pbtxt``
parameter ``threshold_far_<FAR>``, from the IJB-format evaluation): a client never invents one.

Identification is exact inner-product search with numpy (cosine, the embeddings being normalised): at the
sizes a folder gallery has (thousands) one matrix product is exact and faster than building an index; a
million-identity gallery is where an ANN library (FAISS) would pay.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from components.evaluation.roc import rate_key

PIPELINE = "faceforge-pipeline"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class PhotoEmbedding:
    status: str  # ok | no_face | bad_image | align_failed (components/serving/photo.py)
    detail: str
    embedding: np.ndarray  # float32 [D], L2-normalised; zeros unless status == "ok"
    bbox: np.ndarray  # x1 y1 x2 y2 in photo pixels
    landmarks: np.ndarray  # 5 x (x, y)
    det_score: float

    def summary(self, name: str) -> dict[str, Any]:
        out: dict[str, Any] = {"photo": name, "status": self.status}
        if self.status == "ok":
            out |= {"det_score": round(self.det_score, 4), "bbox": [round(float(v), 1) for v in self.bbox],
                    "embedding": [round(float(v), 6) for v in self.embedding]}
        else:
            out["detail"] = self.detail
        return out


class FaceClient:
    """``FaceClient("127.0.0.1:8001").verify(a_bytes, b_bytes)``; one connection, reused for every call."""

    def __init__(self, url: str = "127.0.0.1:8001", protocol: Literal["grpc", "http"] = "grpc",
                 model: str = PIPELINE, timeout_s: float = 60.0) -> None:
        if protocol == "grpc":
            import tritonclient.grpc as triton
        else:
            import tritonclient.http as triton  # type: ignore[no-redef]
        self._triton = triton
        self.protocol, self.model, self.timeout_s = protocol, model, timeout_s
        self.client = triton.InferenceServerClient(url)
        self._config: dict[str, Any] | None = None

    def config(self) -> dict[str, Any]:
        """The served model's config as JSON (max batch size, parameters: lineage and thresholds)."""
        if self._config is None:
            if self.protocol == "grpc":
                self._config = self.client.get_model_config(self.model, as_json=True)["config"]
            else:
                self._config = self.client.get_model_config(self.model)
        return self._config

    def thresholds(self) -> dict[str, float | None]:
        """``{"far_1e-4": cosine or None}`` as the served version's evaluation measured them."""
        parameters = self.config().get("parameters", {})
        raw = parameters.get("thresholds", {}).get("string_value")
        return {far: t.get("cosine") for far, t in json.loads(raw).items()} if raw else {}

    def embed(self, photos: Sequence[bytes]) -> list[PhotoEmbedding]:
        """One :class:`PhotoEmbedding` per photo, in order; requests of at most the model's batch size."""
        step = max(1, int(self.config().get("max_batch_size", 1)))
        out: list[PhotoEmbedding] = []
        for start in range(0, len(photos), step):
            out += self._infer(photos[start:start + step])
        return out

    def _infer(self, photos: Sequence[bytes]) -> list[PhotoEmbedding]:
        data = np.empty((len(photos), 1), dtype=np.object_)
        data[:, 0] = list(photos)
        image = self._triton.InferInput("image", [len(photos), 1], "BYTES")
        image.set_data_from_numpy(data)
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        result = self.client.infer(self.model, [image], **kwargs)
        embedding, bbox = result.as_numpy("embedding"), result.as_numpy("bbox")
        landmarks, score = result.as_numpy("landmarks"), result.as_numpy("det_score")
        status, detail = result.as_numpy("status").reshape(-1), result.as_numpy("detail").reshape(-1)
        return [PhotoEmbedding(status[i].decode(), detail[i].decode(), embedding[i], bbox[i], landmarks[i],
                               float(score[i, 0])) for i in range(len(photos))]

    def verify(self, a: bytes, b: bytes, far: float = 1e-4) -> dict[str, Any]:
        """Same person? The cosine of the two faces against the served threshold at ``far``."""
        key = rate_key("far", far)
        thresholds = self.thresholds()
        if thresholds.get(key) is None:
            known = {k: v for k, v in thresholds.items() if v is not None}
            raise ValueError(f"{self.model}: no threshold at FAR {far:g} in the served version "
                             f"(resolved: {sorted(known) or 'none'}); choose one of those with --far")
        first, second = self.embed([a, b])
        result: dict[str, Any] = {"far": far, "threshold": thresholds[key],
                                  "statuses": [first.status, second.status]}
        if first.status != "ok" or second.status != "ok":
            return result | {"same": None, "score": None,
                             "detail": "; ".join(p.detail for p in (first, second) if p.detail)}
        score = float(first.embedding @ second.embedding)
        return result | {"same": score > thresholds[key], "score": round(score, 6)}

    def identify(self, gallery: dict[str, list[bytes]], probes: Sequence[bytes], top_k: int = 5,
                 ) -> list[list[tuple[str, float]]]:
        """Top-``top_k`` identities per probe, by the best cosine over each identity's enrolled photos
        (photos without a usable face are not enrolled; a probe without one gets an empty list)."""
        names, vectors = [], []
        for identity, photos in gallery.items():
            for face in self.embed(photos):
                if face.status == "ok":
                    names.append(identity)
                    vectors.append(face.embedding)
        if not vectors:
            raise ValueError("the gallery has no photo with a usable face")
        matrix, identities = np.stack(vectors), sorted(set(names))
        position = {identity: i for i, identity in enumerate(identities)}
        index = np.array([position[n] for n in names])
        out = []
        for face in self.embed(probes):
            if face.status != "ok":
                out.append([])
                continue
            best = np.full(len(identities), -np.inf, np.float32)
            np.maximum.at(best, index, matrix @ face.embedding)
            order = np.argsort(-best)[:top_k]
            out.append([(identities[i], round(float(best[i]), 6)) for i in order])
        return out


def read_gallery(folder: Path) -> dict[str, list[bytes]]:
    """``<identity>/*.jpg`` (any image suffix) -> photo bytes per identity."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: gallery folder not found (expected <identity>/<photo> files)")
    gallery = {d.name: [p.read_bytes() for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
               for d in sorted(folder.iterdir()) if d.is_dir()}
    gallery = {k: v for k, v in gallery.items() if v}
    if not gallery:
        raise ValueError(f"{folder}: no <identity>/<photo> files in it")
    return gallery
