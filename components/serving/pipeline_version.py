"""Publishing ``faceforge-pipeline`` versions next to the embedder, and serving the two as a pair.

A pipeline version folder holds ``model.py`` (components/serving/pipeline_model.py), ``detector.onnx``,
``pipeline.json`` (the photo settings and the embedder version it calls) and a copy of the ``components/``
modules that code imports. Its ``faceforge.json`` checksums all of them and records the embedder version's
model checksum and lineage, so one manifest names the detector and the embedder that answer together.

Pairing rules (docs/architecture.md, "Photo-in serving"):
- a pipeline version pins one embedder version (the BLS call names it); serving embedder version N serves
  the pipeline version built for N, publishing one when none exists (older repositories, changed detect
  params), so promote, the watcher's alias moves and rollback all move the pair together;
- while the pair switches, the embedder serves both its old and its new version, and drops the old one last:
  a Triton that polls between two writes never holds a pipeline whose embedder version is unloaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tritonclient.grpc import model_config_pb2 as mc

from components.io.checksums import sha256_file
from components.serving.lineage import Lineage
from components.serving.repository import (
    MANIFEST,
    complete_versions,
    publish_version,
    read_manifest,
    serve_existing,
    served,
    version_config,
)
from components.serving.store import Store
from components.serving.triton_config import parse, render

if TYPE_CHECKING:  # the photo code (OpenCV, ONNX Runtime) runs inside Triton, not where versions are published
    from components.serving.photo import PhotoSettings

PIPELINE_MODEL = Path(__file__).with_name("pipeline_model.py")
# what PIPELINE_MODEL imports
SHIPPED_MODULES = ("components.serving.photo", "components.serving.photo_metrics", "components.monitoring.capture",
                   "components.align.model_input")
_STRING_OUTPUTS = ("status", "detail", "model_sha256", "model_version")


@dataclass(frozen=True)
class PipelineSpec:
    """What a pipeline version is built from besides the embedder: ``publish.pipeline_*`` and ``detect``."""

    name: str
    detector: Path
    photo: PhotoSettings
    max_batch_size: int = 16
    max_queue_delay_us: int = 2000
    instance_count: int = 2


def shipped_sources() -> dict[str, Path]:
    """``components/...`` files the photo code imports, found by importing it in a fresh interpreter (what the
    stub will import, nothing the publishing process happened to load)."""
    program = (f"import sys, {', '.join(SHIPPED_MODULES)}\n"
               "print('\\n'.join(m.__file__ for n, m in sorted(sys.modules.items())\n"
               "                 if (n == 'components' or n.startswith('components.')) and m.__file__))")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, check=True, cwd=root)
    return {str(Path(f).resolve().relative_to(root)): Path(f) for f in out.stdout.split()}


def _embedder_facts(store: Store, embedder: str, version: int) -> dict[str, object]:
    """Names, shapes and checksum of embedder ``version`` as its manifest states them (the config it was
    published with; the repository's current config for versions from before manifests kept one)."""
    manifest = read_manifest(store, embedder, version)
    config = parse(version_config(store, embedder, manifest), f"{store.url}/{embedder}/{version}/{MANIFEST}")
    return {"model": embedder, "version": version, "sha256": manifest["sha256"]["model.onnx"],
            "mlflow_model_version": manifest.get("lineage", {}).get("mlflow_model_version"),
            "input": config.input[0].name, "output": config.output[0].name,
            "embedding_size": int(config.output[0].dims[-1]), "max_batch_size": int(config.max_batch_size) or 1}


def pipeline_config(spec: PipelineSpec, versions: list[int], embedding_size: int, lineage: Lineage) -> str:
    """``config.pbtxt`` of the photo-in model: contract names ``image`` in, the face and its embedding out;
    besides, the number of faces found, the aligned crop (a gallery keeps it to re-embed without the photo)
    and which embedder answered (``model_sha256``, ``model_version``: the MLflow version, empty if none)."""
    config = mc.ModelConfig(name=spec.name, backend="python", max_batch_size=spec.max_batch_size)
    config.input.add(name="image", data_type=mc.TYPE_STRING, dims=[1])
    for name, dims in (("embedding", [embedding_size]), ("bbox", [4]), ("landmarks", [10]), ("det_score", [1])):
        config.output.add(name=name, data_type=mc.TYPE_FP32, dims=dims)
    for name in _STRING_OUTPUTS:
        config.output.add(name=name, data_type=mc.TYPE_STRING, dims=[1])
    config.output.add(name="faces", data_type=mc.TYPE_INT32, dims=[1])
    size = spec.photo.image_size
    config.output.add(name="crop", data_type=mc.TYPE_UINT8, dims=[size, size, 3])
    config.dynamic_batching.max_queue_delay_microseconds = spec.max_queue_delay_us
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=spec.instance_count)
    config.version_policy.specific.versions.extend(versions)
    for key, value in lineage.config_parameters().items():
        config.parameters[key].string_value = value
    return render(config)


def pipeline_files(store: Store, spec: PipelineSpec, embedder: str, embedder_version: int,
                   work: Path) -> dict[str, Path]:
    """The files of the pipeline version for ``embedder_version`` as this installation builds them (``work``
    holds the generated ``pipeline.json``): what serving publishes, and what a tampered one is restored from."""
    return _version_files(spec, _embedder_facts(store, embedder, embedder_version), work)


def _version_files(spec: PipelineSpec, embedder: dict[str, object], work: Path) -> dict[str, Path]:
    pipeline_json = work / "pipeline.json"
    pipeline_json.write_text(json.dumps({"photo": spec.photo.to_json(), "embedder": embedder}, indent=2,
                                        sort_keys=True))
    return {"model.py": PIPELINE_MODEL, "detector.onnx": spec.detector, "pipeline.json": pipeline_json,
            **shipped_sources()}


def pipeline_for(store: Store, name: str, files: dict[str, Path]) -> int | None:
    """The newest complete pipeline version holding exactly ``files`` (same checksums), if any."""
    wanted = {key: sha256_file(path) for key, path in files.items()}
    for version in reversed(complete_versions(store, name)):
        if read_manifest(store, name, version).get("sha256") == wanted:
            return version
    return None


def serve_pipeline(store: Store, spec: PipelineSpec, embedder: str, embedder_version: int) -> int:
    """Serve the pipeline version built for ``embedder_version`` (publishing it if needed); returns it."""
    facts = _embedder_facts(store, embedder, embedder_version)
    lineage = Lineage.from_manifest(read_manifest(store, embedder, embedder_version).get("lineage", {})
                                    or {"model_sha256": facts["sha256"]})
    with tempfile.TemporaryDirectory() as tmp:
        files = _version_files(spec, facts, Path(tmp))
        existing = pipeline_for(store, spec.name, files)
        if existing is not None:
            return serve_existing(store, spec.name, existing)
        metadata = {"embedder": facts, "detector": {"sha256": sha256_file(spec.detector)},
                    "lineage": lineage.manifest()}
        return publish_version(store, spec.name, files,
                               lambda v: pipeline_config(spec, [v], int(facts["embedding_size"]), lineage),
                               metadata)


def pinned_embedder(store: Store, name: str) -> int | None:
    """The embedder version the served pipeline version calls (None when no pipeline is served)."""
    current = served(store, name)
    return int(read_manifest(store, name, max(current))["embedder"]["version"]) if current else None


def serve_pair(store: Store, embedder: str, version: int, spec: PipelineSpec | None) -> int | None:
    """Serve embedder ``version`` and, with ``spec``, its pipeline; returns the pipeline version served."""
    if spec is None:
        serve_existing(store, embedder, version)
        return None
    previous = [v for v in served(store, embedder) if v != version]
    serve_existing(store, embedder, version, keep=previous)  # both loaded while the pipeline switches
    # Should the pipeline fail here, both embedder versions stay served: the old pipeline keeps answering, and
    # the watcher sees the pair unfinished (pinned_embedder != version) and runs this again.
    pipeline_version = serve_pipeline(store, spec, embedder, version)
    serve_existing(store, embedder, version)
    return pipeline_version
