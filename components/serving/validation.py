"""Infra-validation: load a built repository in a real Triton and check its answers against ONNX Runtime.

Like TFX's InfraValidator, a model is only "blessed" for serving once a server has actually loaded it and
answered real requests: a config Triton rejects, a missing file or a wrong tensor name fails here with
Triton's own message, not in production.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http

from components.serving.pipeline_version import PipelineSpec, serve_pair
from components.serving.repository import publish_onnx
from components.serving.store import LocalStore
from components.serving.triton_config import ServingOptions
from components.serving.triton_server import TritonError, TritonServer


def query(server: TritonServer, name: str, x: np.ndarray, batch: int) -> tuple[np.ndarray, np.ndarray]:
    """The same faces over HTTP and over gRPC, in batches of ``batch``: (http embeddings, grpc embeddings)."""
    http = triton_http.InferenceServerClient(server.http_url)
    grpc = triton_grpc.InferenceServerClient(server.grpc_url)
    out_http, out_grpc = [], []
    for start in range(0, len(x), batch):
        chunk = np.ascontiguousarray(x[start:start + batch])
        h = triton_http.InferInput("input", list(chunk.shape), "FP32")
        h.set_data_from_numpy(chunk)
        out_http.append(http.infer(name, [h]).as_numpy("embedding"))
        g = triton_grpc.InferInput("input", list(chunk.shape), "FP32")
        g.set_data_from_numpy(chunk)
        out_grpc.append(grpc.infer(name, [g]).as_numpy("embedding"))
    return np.concatenate(out_http), np.concatenate(out_grpc)


def check_pipeline(server: TritonServer, spec: PipelineSpec, onnx_path: Path, photos: list[Path],
                   max_abs_diff: float) -> dict[str, Any]:
    """Raw photos through the photo-in model (gRPC and HTTP) against the same photo code and ONNX model run in
    this process: same statuses, same faces, embeddings within ``max_abs_diff``."""
    from components.evaluation.embedders import OnnxEmbedder
    from components.serving.client import FaceClient
    from components.serving.photo import PhotoFaces

    faces = PhotoFaces(spec.detector, spec.photo)
    data = [p.read_bytes() for p in photos]
    local = [faces(d, str(p)) for p, d in zip(photos, data, strict=True)]
    crops = [f.crop for f in local if f.crop is not None]
    expected = OnnxEmbedder(onnx_path)(np.stack(crops)) if crops else None
    if expected is not None:
        expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    worst = 0.0
    for url, protocol in ((server.grpc_url, "grpc"), (server.http_url, "http")):
        served = FaceClient(url, protocol, spec.name).embed(data)  # type: ignore[arg-type]
        ok = iter(expected if expected is not None else ())
        for path, mine, theirs in zip(photos, local, served, strict=True):
            if mine.status != theirs.status:
                raise TritonError(f"{spec.name} ({protocol}): {path} is {theirs.status!r} served, "
                                  f"{mine.status!r} in-process")
            if mine.status != "ok":
                continue
            if not np.allclose(mine.bbox, theirs.bbox, atol=1e-3):
                raise TritonError(f"{spec.name} ({protocol}): {path}: face {theirs.bbox} served, {mine.bbox} "
                                  "in-process")
            worst = max(worst, float(np.abs(next(ok) - theirs.embedding).max()))
    if worst > max_abs_diff:
        raise TritonError(f"{spec.name}: served photo embeddings differ from in-process ones by up to {worst:.3g}")
    return {"photos": len(photos), "faces": len(crops), "statuses": sorted({f.status for f in local}),
            "max_abs_diff": worst}


def infra_validate(onnx_path: Path, name: str, options: ServingOptions, inputs: np.ndarray, reference: np.ndarray,
                   workdir: Path, max_abs_diff: float = 1e-5, pipeline: PipelineSpec | None = None,
                   photos: list[Path] | None = None) -> dict[str, Any]:
    """Serve ``onnx_path`` with the python backend (the one the bundled Triton has), query over HTTP and gRPC;
    with ``pipeline``, the photo-in model too, on ``photos``.

    What is loaded is a python-backend copy of the same ONNX file; a published ``onnxruntime``/TensorRT config
    is only schema-validated (``render``), since this Triton build has no such backend. The result says so."""
    repo = workdir / "validation_repository"
    store = LocalStore(repo)
    version = publish_onnx(store, name, onnx_path,
                           replace(options, backend="python", instance_kind="cpu", tensorrt=False), {}, serve=False)
    serve_pair(store, name, version, pipeline)
    start = time.perf_counter()
    with TritonServer(repo) as server:
        startup = time.perf_counter() - start
        if not triton_http.InferenceServerClient(server.http_url).is_model_ready(name):
            raise TritonError(f"model {name} not ready:\n{server.errors()}")
        batch = max(1, min(options.max_batch_size, 16))
        via_http, via_grpc = query(server, name, inputs, batch)
        photo_in = check_pipeline(server, pipeline, onnx_path, photos or [], max_abs_diff) if pipeline else None
    result = {"loaded_backend": "python", "published_backend": options.backend,
              "published_config_loaded": options.backend == "python",
              "server_startup_s": round(startup, 2), "faces": len(inputs),
              "max_abs_diff_http": float(np.abs(via_http - reference).max()),
              "max_abs_diff_grpc": float(np.abs(via_grpc - reference).max()), "tolerance": max_abs_diff}
    if photo_in is not None:
        result["pipeline"] = photo_in
    result["passed"] = max(result["max_abs_diff_http"], result["max_abs_diff_grpc"]) <= max_abs_diff
    if not result["passed"]:
        raise TritonError(f"Triton's embeddings differ from ONNX Runtime's by up to "
                          f"{max(result['max_abs_diff_http'], result['max_abs_diff_grpc']):.3g} (> {max_abs_diff})")
    return result
