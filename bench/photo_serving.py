"""Photo-in serving under load: ``faceforge-pipeline`` and the tensor-in embedder on the bundled Triton, against
decode -> detect -> align -> embed run directly in one process, then a soak with bad photos mixed in.

Models: the demo's ``data/export/model.onnx`` published as ``make demo``'s publish stage does, with the
python backend (what the bundled Triton has). Photos: the sample's raw photos (``data/raw``). Every request
carries one photo (or one face), as a face service receives them; Triton's dynamic batcher groups them.
- load: concurrency 1, 8, 32, ``REQUESTS`` requests each; throughput, p50/p99 latency, errors (must be 0:
  an exception, or a status other than ``ok`` for a photo the detect stage found a face in).
- direct: the same photos through the same code (components/serving/photo.py + ONNX Runtime) from the same
  number of threads in this process, sharing one detector and one embedder session.
- soak: ``SOAK_S`` seconds at concurrency 8, one request in 20 a bad photo (empty, truncated, a 20000x20000
  PNG header, text); no error other than the bad photos' statuses; Triton's memory (server + python-backend
  processes) at the start and the end.
- equality: served embeddings against the align stage's stored JPEG crops (cosine) for the demo model.
Writes ``reports/bench/photo_serving.json``.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tritonclient.grpc as triton_grpc

from bench.threads import run_concurrently
from components.evaluation.embedders import OnnxEmbedder, to_input
from components.io.images import read_rgb
from components.serving.client import FaceClient
from components.serving.lineage import Lineage
from components.serving.photo import PhotoFaces
from components.serving.store import LocalStore
from components.serving.triton_config import ServingOptions
from components.serving.triton_server import TritonServer
from pipelines.params import load_params
from pipelines.publish import pipeline_spec, push
from tests.bad_inputs import png_with_claimed_size

OUT = Path("reports/bench/photo_serving.json")
MODEL, RAW, ALIGNED = Path("data/export/model.onnx"), Path("data/raw"), Path("data/aligned")
REQUESTS = int(os.environ.get("FACEFORGE_BENCH_REQUESTS", "400"))
SOAK_S = float(os.environ.get("FACEFORGE_BENCH_SOAK_S", "180"))
LEVELS = [int(c) for c in os.environ.get("FACEFORGE_BENCH_CONCURRENCY", "1,8,32").split(",")]


def _run(call: Callable[[int, int], bool], concurrency: int, requests: int) -> dict[str, Any]:
    """``call(worker, i) -> ok`` for i in range(requests), from ``concurrency`` threads."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(requests))

    def worker(k: int) -> None:
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            start, failure = time.perf_counter(), None
            try:
                if not call(k, i):
                    failure = f"request {i}: unexpected answer"
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
                failure = str(exc).splitlines()[0][:200]
            with lock:
                latencies.append(time.perf_counter() - start)
                if failure:
                    errors.append(failure)

    elapsed = run_concurrently(worker, concurrency)
    ms = np.asarray(latencies) * 1000
    return {"requests": len(ms), "per_s": round(len(ms) / elapsed, 2), "p50_ms": round(float(np.median(ms)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1), "errors": len(errors), "error_examples": errors[:3]}


def _tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants (Triton and its python-backend stubs), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return round(total / 1024, 1)


def _bad_photos(good: bytes) -> list[bytes]:
    return [b"", good[: len(good) // 3], png_with_claimed_size(20000, 20000), b"this is not an image\n"]


def main() -> None:
    params = load_params(Path("params.yaml"))
    spec = pipeline_spec(params)
    assert spec is not None, "publish.pipeline_name is null: nothing to measure"
    stages = pd.read_parquet(ALIGNED / "manifest.parquet")
    photos = [(RAW / p).read_bytes() for p in stages.path]  # photos the detect stage found a face in
    crops = np.stack([read_rgb(ALIGNED / p, 10**8) for p in stages.aligned_path])
    faces_in = to_input(crops)
    results: dict[str, Any] = {
        "model": str(MODEL), "photos": len(photos), "cores": os.cpu_count(), "requests_per_level": REQUESTS,
        "backend": "python (bundled Triton): photo-in model with BLS into the embedder, both ONNX Runtime on CPU",
        "goal": "photo-in Triton >= 0.9x direct in one process at concurrency 8; 0 errors; soak memory flat"}

    detector, embedder = PhotoFaces(spec.detector, spec.photo), OnnxEmbedder(MODEL)

    def direct(k: int, i: int) -> bool:
        face = detector(photos[i % len(photos)])
        if face.crop is None:
            return False
        embedder(face.crop[None])
        return True

    options = ServingOptions(backend="python", max_batch_size=params.publish.max_batch_size,
                             preferred_batch_sizes=tuple(params.publish.preferred_batch_sizes),
                             max_queue_delay_us=params.publish.max_queue_delay_us)
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        push(LocalStore(repo), params.publish.model_name, MODEL, options, Lineage(model_sha256="bench"), spec)
        with TritonServer(repo) as server:
            pid = server.pid
            clients = [FaceClient(server.grpc_url) for _ in range(32)]
            tensor_clients = [triton_grpc.InferenceServerClient(server.grpc_url) for _ in range(32)]

            def photo_in(k: int, i: int) -> bool:
                return clients[k].embed([photos[i % len(photos)]])[0].status == "ok"

            def tensor_in(k: int, i: int) -> bool:
                x = np.ascontiguousarray(faces_in[i % len(faces_in)][None])
                request = triton_grpc.InferInput("input", list(x.shape), "FP32")
                request.set_data_from_numpy(x)
                tensor_clients[k].infer(params.publish.model_name, [request])
                return True

            photo_in(0, 0)  # first call loads the python-backend sessions
            for concurrency in LEVELS:
                row = {"photo_in_triton": _run(photo_in, concurrency, REQUESTS),
                       "photo_direct": _run(direct, concurrency, REQUESTS),
                       "tensor_in_triton": _run(tensor_in, concurrency, REQUESTS)}
                row["photo_in_vs_direct"] = round(row["photo_in_triton"]["per_s"] / row["photo_direct"]["per_s"], 2)
                results[f"concurrency_{concurrency}"] = row
                print(concurrency, json.dumps(row), flush=True)

            served = FaceClient(server.grpc_url).embed(photos)
            stored = embedder(crops)
            stored /= np.linalg.norm(stored, axis=1, keepdims=True)
            cosine = np.einsum("nd,nd->n", stored, np.stack([s.embedding for s in served]))
            results["served_vs_stored_jpeg_crop_cosine"] = {
                "min": round(float(cosine.min()), 4), "median": round(float(np.median(cosine)), 4),
                "note": "the stored crop is the align stage's JPEG (quality 95); the served crop is the same "
                        "pixels before encoding (byte-identical once encoded, tests/test_photo_serving.py)"}

            bad = _bad_photos(photos[0])

            def soak(k: int, i: int) -> bool:
                if i % 20 == 19:
                    return clients[k].embed([bad[(i // 20) % len(bad)]])[0].status == "bad_image"
                return photo_in(k, i)

            rss_start = _tree_rss_mb(pid)
            started, soak_rows = time.perf_counter(), []
            while time.perf_counter() - started < SOAK_S:  # rounds of 200: bounded in count and in time
                soak_rows.append(_run(soak, 8, 200))
            results["soak"] = {
                "seconds": round(time.perf_counter() - started, 1), "concurrency": 8,
                "requests": sum(r["requests"] for r in soak_rows),
                "bad_photos": sum(r["requests"] // 20 for r in soak_rows),
                "errors": sum(r["errors"] for r in soak_rows), "per_s": round(float(np.mean(
                    [r["per_s"] for r in soak_rows])), 2),
                "p99_ms_worst_round": max(r["p99_ms"] for r in soak_rows),
                "triton_rss_mb_start": rss_start, "triton_rss_mb_end": _tree_rss_mb(pid),
                "server_ready_after": server_ready(server)}
            print("soak", json.dumps(results["soak"]), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")


def server_ready(server: TritonServer) -> bool:
    return bool(triton_grpc.InferenceServerClient(server.grpc_url).is_server_ready())


if __name__ == "__main__":
    main()
