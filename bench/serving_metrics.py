"""What watching the served model costs: photo-in throughput with Triton's metrics and the drift capture on (the
photo-in model's ``faceforge_*`` series recorded for every photo, the endpoint scraped every second, every answer
captured: what ``faceforge triton`` runs by default) against both off (``--metrics-port 0 --capture none``), side
by side, then a soak with both on.

Same repository, same photos, same client load for both: the demo's model (``FACEFORGE_BENCH_MODEL``, default
``data/export/model.onnx``) published with its photo-in model as bench/photo_serving.py does; every request one
photo at concurrency 8. Rounds alternate on/off (the order flips each round) and each round starts its own
Triton, so a slow minute of the machine falls on both. Soak: ``SOAK_S`` seconds at concurrency 8 with both on
and one photo in 20 a bad one, after a warm-up round (ONNX Runtime's arenas grow to the batch sizes first);
Triton's memory (server + python-backend stubs) after each round of 200 requests.
Writes ``reports/bench/serving_metrics.json``. Goal ([P]): throughput within 2%; memory flat over the soak.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pandas as pd

from bench.photo_serving import _bad_photos, _run, _tree_rss_mb
from components.serving.client import FaceClient
from components.serving.lineage import Lineage
from components.serving.store import LocalStore
from components.serving.triton_config import ServingOptions
from components.serving.triton_server import TritonServer
from pipelines.params import load_params
from pipelines.publish import pipeline_spec, push

OUT = Path("reports/bench/serving_metrics.json")
MODEL = Path(os.environ.get("FACEFORGE_BENCH_MODEL", "data/export/model.onnx"))
RAW, ALIGNED = Path("data/raw"), Path("data/aligned")
REQUESTS = int(os.environ.get("FACEFORGE_BENCH_REQUESTS", "400"))
ROUNDS = int(os.environ.get("FACEFORGE_BENCH_ROUNDS", "3"))
SOAK_S = float(os.environ.get("FACEFORGE_BENCH_SOAK_S", "180"))
CONCURRENCY = 8


class Scraper:
    """Reads the metrics endpoint every second while a round runs, as a Prometheus with a 1 s interval would."""

    def __init__(self, url: str | None) -> None:
        self.url, self.scrapes, self._stop = url, 0, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while self.url and not self._stop.wait(1.0):
            with urllib.request.urlopen(self.url, timeout=10) as response:
                response.read()
            self.scrapes += 1

    def __enter__(self) -> Scraper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _round(repo: Path, photos: list[bytes], metrics: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as capture, \
            TritonServer(repo, metrics=metrics, capture=capture if metrics else None) as server:
        clients = [FaceClient(server.grpc_url) for _ in range(CONCURRENCY)]
        clients[0].embed([photos[0]])  # first call loads the python-backend sessions
        with Scraper(server.metrics_url) as scraper:
            row = _run(lambda k, i: clients[k].embed([photos[i % len(photos)]])[0].status == "ok", CONCURRENCY,
                       REQUESTS)
        return row | {"metrics": metrics, "scrapes": scraper.scrapes}


def _soak(repo: Path, photos: list[bytes]) -> dict[str, Any]:
    bad = _bad_photos(photos[0])
    with tempfile.TemporaryDirectory() as capture, TritonServer(repo, capture=capture) as server:
        clients = [FaceClient(server.grpc_url) for _ in range(CONCURRENCY)]

        def call(k: int, i: int) -> bool:
            if i % 20 == 19:
                return clients[k].embed([bad[(i // 20) % len(bad)]])[0].status == "bad_image"
            return clients[k].embed([photos[i % len(photos)]])[0].status == "ok"

        _run(call, CONCURRENCY, 200)  # warm-up
        rss = [_tree_rss_mb(server.pid)]
        started, rows = time.perf_counter(), []
        with Scraper(server.metrics_url) as scraper:
            while time.perf_counter() - started < SOAK_S:  # rounds of 200: bounded in count and in time
                rows.append(_run(call, CONCURRENCY, 200))
                rss.append(_tree_rss_mb(server.pid))
        captured = sum(1 for _ in Path(capture).rglob("*.npz"))
        return {"seconds": round(time.perf_counter() - started, 1), "requests": sum(r["requests"] for r in rows),
                "errors": sum(r["errors"] for r in rows), "scrapes": scraper.scrapes, "capture_chunks": captured,
                "per_s": round(statistics.mean(r["per_s"] for r in rows), 2),
                "triton_rss_mb_start": rss[0], "triton_rss_mb_end": rss[-1], "triton_rss_mb_by_round": rss}


def main() -> None:
    params = load_params(Path("params.yaml"))
    spec = pipeline_spec(params)
    assert spec is not None, "publish.pipeline_name is null: nothing to measure"
    photos = [(RAW / p).read_bytes() for p in pd.read_parquet(ALIGNED / "manifest.parquet").path]
    options = ServingOptions(backend="python", max_batch_size=params.publish.max_batch_size,
                             preferred_batch_sizes=tuple(params.publish.preferred_batch_sizes),
                             max_queue_delay_us=params.publish.max_queue_delay_us)
    results: dict[str, Any] = {
        "model": str(MODEL), "photos": len(photos), "cores": os.cpu_count(), "requests_per_round": REQUESTS,
        "concurrency": CONCURRENCY, "rounds": ROUNDS,
        "goal": "photo-in throughput with metrics (and capture) on within 2% of off; Triton memory flat over the soak"}
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / "repo"
        push(LocalStore(repo), params.publish.model_name, MODEL, options, Lineage(model_sha256="bench"), spec)
        rows = []
        for r in range(ROUNDS):
            for metrics in ((True, False) if r % 2 == 0 else (False, True)):
                rows.append(_round(repo, photos, metrics))
                print(json.dumps(rows[-1]), flush=True)
        on = statistics.median(row["per_s"] for row in rows if row["metrics"])
        off = statistics.median(row["per_s"] for row in rows if not row["metrics"])
        results["rounds_measured"] = rows
        results["per_s_median"] = {"metrics_and_capture_on": on, "both_off": off, "on_vs_off": round(on / off, 4)}
        print("median", json.dumps(results["per_s_median"]), flush=True)
        results["soak_metrics_and_capture_on"] = _soak(repo, photos)
        print("soak", json.dumps(results["soak_metrics_and_capture_on"]), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
