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
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from components.evaluation.roc import rate_key

PIPELINE = "faceforge-pipeline"
# Triton's words for a model that is being (re)loaded: the photo-in model itself, or the embedder it calls
_RELOADING = ("is not ready", "not at ready state", "unavailable")
# what every answer carries (``crop`` only when asked); a version without the last three still answers
_OUTPUTS = ("embedding", "bbox", "landmarks", "det_score", "status", "detail", "faces", "model_sha256",
            "model_version")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class PhotoEmbedding:
    status: str  # ok | no_face | bad_image | align_failed (components/serving/photo.py)
    detail: str
    embedding: np.ndarray  # float32 [D], L2-normalised; zeros unless status == "ok"
    bbox: np.ndarray  # x1 y1 x2 y2 in photo pixels
    landmarks: np.ndarray  # 5 x (x, y)
    det_score: float
    faces: int | None = None  # faces found in the photo (None: a photo-in version from before it said)
    crop: np.ndarray | None = None  # the aligned uint8 face, when asked for
    model_sha256: str | None = None  # the embedder that answered (None: a version from before it said)
    model_version: str | None = None  # its MLflow version ("" when it was not registered)

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
                 model: str = PIPELINE, timeout_s: float = 60.0, reload_wait_s: float = 30.0) -> None:
        if protocol == "grpc":
            import tritonclient.grpc as triton
        else:
            import tritonclient.http as triton  # type: ignore[no-redef]
        self._triton = triton
        self.protocol, self.model, self.timeout_s, self.reload_wait_s = protocol, model, timeout_s, reload_wait_s
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

    def refresh(self) -> None:
        """Read the served config again on next use (a long-lived client after a version switch)."""
        self._config = None

    def thresholds(self) -> dict[str, float | None]:
        """``{"far_1e-4": cosine or None}`` as the served version's evaluation measured them."""
        parameters = self.config().get("parameters", {})
        raw = parameters.get("thresholds", {}).get("string_value")
        return {far: t.get("cosine") for far, t in json.loads(raw).items()} if raw else {}

    def outputs(self) -> set[str]:
        """The served photo-in version's output names (versions published before [O] lack ``faces``, ``crop``
        and the ``model_*`` pair)."""
        return {o["name"] for o in self.config().get("output", [])}

    def embed(self, photos: Sequence[bytes], crops: bool = False) -> list[PhotoEmbedding]:
        """One :class:`PhotoEmbedding` per photo, in order; requests of at most the model's batch size.
        ``crops``: also return each aligned face (what a gallery stores; 37 KB a face, so only when asked)."""
        step = max(1, int(self.config().get("max_batch_size", 1)))
        wanted = [name for name in _OUTPUTS if name in self.outputs()]
        if crops:
            if "crop" not in self.outputs():
                raise ValueError(f"{self.model}: the served version returns no aligned crop (published before "
                                 "galleries existed): promote or publish the model again")
            wanted.append("crop")
        out: list[PhotoEmbedding] = []
        for start in range(0, len(photos), step):
            out += self._infer(photos[start:start + step], wanted)
        return out

    def _infer(self, photos: Sequence[bytes], wanted: list[str]) -> list[PhotoEmbedding]:
        data = np.empty((len(photos), 1), dtype=np.object_)
        data[:, 0] = list(photos)
        image = self._triton.InferInput("image", [len(photos), 1], "BYTES")
        image.set_data_from_numpy(data)
        kwargs = {"client_timeout": self.timeout_s} if self.protocol == "grpc" else {}
        outputs = [self._triton.InferRequestedOutput(name) for name in wanted]
        result = self._reloading_retried(lambda: self.client.infer(self.model, [image], outputs=outputs, **kwargs))
        got = {name: result.as_numpy(name) for name in wanted}

        def text(name: str, i: int) -> str | None:
            return got[name][i].reshape(-1)[0].decode() if name in got else None

        return [PhotoEmbedding(text("status", i) or "", text("detail", i) or "", got["embedding"][i],
                               got["bbox"][i], got["landmarks"][i], float(got["det_score"][i, 0]),
                               int(got["faces"][i, 0]) if "faces" in got else None,
                               got["crop"][i] if "crop" in got else None,
                               text("model_sha256", i), text("model_version", i))
                for i in range(len(photos))]

    def _reloading_retried(self, call: Callable[[], Any]) -> Any:
        """``call()``, again while Triton reloads the model: a served version switch rewrites ``config.pbtxt``
        and Triton (poll mode) reloads the model, unavailable for a moment; a swap must not fail the requests
        made meanwhile. Other errors, and one lasting past ``reload_wait_s``, are raised as they are."""
        from tritonclient.utils import InferenceServerException

        deadline = time.monotonic() + self.reload_wait_s
        while True:
            try:
                return call()
            except InferenceServerException as exc:
                reloading = any(sign in str(exc) for sign in _RELOADING)
                if not reloading or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

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
