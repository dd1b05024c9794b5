"""Aligned face crops kept next to the gallery, so a new model version re-embeds from them, never from photos.

Crops live in a folder or under ``s3://bucket/prefix`` (the serving repositories' :class:`Store`), one lossless
PNG per face named by its SHA-256 (``crops/<sha256>.png``): writing the same face twice writes one object, and
the database row names the object by the hash a search of the store finds ([Q]'s erasure checks).
"""

from __future__ import annotations

import hashlib

import cv2
import numpy as np

from components.serving.store import Store, StoreError, open_store


class CropStore:
    def __init__(self, url: str) -> None:
        self.store: Store = open_store(url)

    @staticmethod
    def _key(sha256: str) -> str:
        return f"crops/{sha256}.png"

    def put(self, crop: np.ndarray) -> str:
        """Store an RGB uint8 crop; returns the SHA-256 of the stored PNG."""
        ok, png = cv2.imencode(".png", np.ascontiguousarray(crop[:, :, ::-1]))
        if not ok:
            raise ValueError(f"crop of shape {crop.shape} cannot be encoded as PNG")
        data = png.tobytes()
        sha = hashlib.sha256(data).hexdigest()
        self.store.write(self._key(sha), data)
        return sha

    def get(self, sha256: str) -> np.ndarray:
        """The RGB uint8 crop; a missing or altered object is an error naming it, never a wrong embedding."""
        data = self.store.read(self._key(sha256))
        if data is None:
            raise StoreError(f"{self.store.url}/{self._key(sha256)}: crop missing from the gallery's crop store")
        if hashlib.sha256(data).hexdigest() != sha256:
            raise StoreError(f"{self.store.url}/{self._key(sha256)}: content does not match its SHA-256")
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]

    def delete(self, sha256: str) -> None:
        self.store.delete(self._key(sha256))
