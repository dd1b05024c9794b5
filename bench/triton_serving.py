"""Triton (gRPC, dynamic batching) vs ONNX Runtime called directly: same model, same faces, concurrency 1/8/32.

The model is the demo's ``data/export/model.onnx`` served by the bundled Triton through the python backend
(the only backend that Triton build ships; production uses the onnxruntime backend). Each client sends one
face per request, as a face-recognition service receives them; Triton's dynamic batcher groups concurrent
requests. ONNX Runtime direct: the same number of threads calling one shared session, one face per call.
Writes ``reports/bench/triton_serving.json``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc

from bench.threads import run_concurrently
from components.evaluation.embedders import OnnxEmbedder, to_input
from components.evaluation.verification import load_bin
from components.serving.repository import publish_onnx
from components.serving.store import LocalStore
from components.serving.triton_config import ServingOptions
from components.serving.triton_server import TritonServer

OUT = Path("reports/bench/triton_serving.json")
MODEL, FACES = Path("data/export/model.onnx"), Path("data/eval_sets/orl_holdout.bin")
SECONDS = 8.0


def _load(call, faces: np.ndarray, concurrency: int) -> dict[str, float]:
    """Run ``call(face_batch_of_1)`` from ``concurrency`` threads for SECONDS; throughput and latency."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    stop = time.perf_counter() + SECONDS

    def worker(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            t = time.perf_counter()
            call(k, faces[i % len(faces)][None])
            latencies[k].append(time.perf_counter() - t)
            i += concurrency

    elapsed = run_concurrently(worker, concurrency)
    ms = np.concatenate([np.asarray(x) for x in latencies]) * 1000
    return {"images_per_s": round(len(ms) / elapsed, 1), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2), "requests": len(ms)}


def main() -> None:
    faces = to_input(load_bin(FACES).images[:256])
    direct = OnnxEmbedder(MODEL).session
    results: dict[str, object] = {"model": str(MODEL), "backend": "python (ONNX Runtime inside Triton)",
                                  "goal": "Triton >= 0.8x direct ONNX Runtime images/s at concurrency 8"}
    options = ServingOptions(backend="python", max_batch_size=32, preferred_batch_sizes=(8, 16, 32),
                             max_queue_delay_us=2000)
    with tempfile.TemporaryDirectory() as tmp:
        publish_onnx(LocalStore(Path(tmp) / "repo"), "embedder", MODEL, options, {})
        with TritonServer(Path(tmp) / "repo") as server:
            for concurrency in (1, 8, 32):
                clients = [triton_grpc.InferenceServerClient(server.grpc_url) for _ in range(concurrency)]

                def via_triton(k: int, x: np.ndarray, clients=clients) -> None:
                    request = triton_grpc.InferInput("input", list(x.shape), "FP32")
                    request.set_data_from_numpy(x)
                    clients[k].infer("embedder", [request])

                row = {"triton_grpc": _load(via_triton, faces, concurrency),
                       "onnxruntime_direct": _load(lambda k, x: direct.run(None, {"input": x}), faces, concurrency)}
                row["ratio"] = round(row["triton_grpc"]["images_per_s"] / row["onnxruntime_direct"]["images_per_s"], 2)
                results[f"concurrency_{concurrency}"] = row
                print(concurrency, json.dumps(row), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
