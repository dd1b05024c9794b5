"""One serving repository as a promotion sees it: the embedder and, when configured, its photo-in model.

Promotion (flows/promotion.py) asks a repository four things: what it serves now, whether it already holds a
model, to publish one without serving it, and to switch to a version; a rollback also asks for an earlier
version and its model file (to re-embed a gallery with it). The repository's rules (versions only
grow, a manifest marks a version complete, the pair moves together) stay in repository.py and
pipeline_version.py; this class is the one door promotion and rollback go through.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from components.serving.lineage import Lineage
from components.serving.pipeline_version import PipelineSpec, pinned_embedder, serve_pair
from components.serving.repository import (
    publish_onnx,
    published_version,
    read_manifest,
    rollback_target,
    served_manifest,
)
from components.serving.store import Store, StoreError
from components.serving.triton_config import ServingOptions


@dataclass(frozen=True)
class ServedPair:
    store: Store
    embedder: str
    pipeline: PipelineSpec | None

    @property
    def url(self) -> str:
        return self.store.url

    def serving(self) -> tuple[str | None, int | None]:
        """(MLflow version, repository version) served now, from the served version's manifest. The MLflow
        version is None while the photo-in model does not call that version yet (an interrupted switch,
        which the next promotion finishes)."""
        manifest = served_manifest(self.store, self.embedder) or {}
        version = manifest.get("version")
        if self.pipeline is not None and version is not None and \
                pinned_embedder(self.store, self.pipeline.name) != version:
            return None, version
        return manifest.get("lineage", {}).get("mlflow_model_version"), version

    def holding(self, lineage: Lineage) -> int | None:
        """The repository version that already holds this model (same file, same MLflow version), if any."""
        return published_version(self.store, self.embedder, lineage)

    def publish(self, model: Path, options: ServingOptions, lineage: Lineage) -> int:
        """Upload and verify ``model`` as the next version; nothing served changes."""
        return publish_onnx(self.store, self.embedder, model, options, {"lineage": lineage.manifest()}, serve=False)

    def switch(self, version: int) -> int | None:
        """Serve embedder ``version`` with its photo-in model; returns the photo-in model's version."""
        return serve_pair(self.store, self.embedder, version, self.pipeline)

    def earlier(self, to: int | None = None) -> int:
        """``to``, else the complete version before the one served now (what a rollback serves)."""
        return rollback_target(self.store, self.embedder, to)

    def model(self, version: int) -> tuple[str, str | None]:
        """(model.onnx SHA-256, MLflow version or None) of repository version ``version``."""
        manifest = read_manifest(self.store, self.embedder, version)
        return manifest["sha256"]["model.onnx"], manifest.get("lineage", {}).get("mlflow_model_version")

    def model_file(self, version: int, into: Path) -> Path:
        """Repository version ``version``'s ``model.onnx`` copied to ``into``, checked against its manifest."""
        expected = self.model(version)[0]
        data = self.store.read(f"{self.embedder}/{version}/model.onnx")
        if data is None or hashlib.sha256(data).hexdigest() != expected:
            raise StoreError(f"{self.url}/{self.embedder}/{version}/model.onnx: missing or not the published file")
        path = Path(into) / f"{self.embedder}-{version}.onnx"
        path.write_bytes(data)
        return path
