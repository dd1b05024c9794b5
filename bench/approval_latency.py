"""Approval -> served: seconds from a ``champion`` alias move to Triton answering with that very version.

One machine, as the README runs it: ``faceforge serve-flows`` (its local Prefect server; the approval watcher every
``orchestration.approval_poll_s`` seconds, default 30) and the bundled Triton polling the serving folder every
5 s (``faceforge triton``'s default). Two registered versions of an exported mbf embedder (two seeds: two
distinct files, both tagged as having passed the gate); the alias is moved through MLflow's API as the UI does,
5 times, alternating, after one warm-up move. Each time counts until Triton's metadata names the expected
repository version *and* its embeddings equal ONNX Runtime's on that version's file. Writes
``reports/bench/approval_latency.json``.

The latency is dominated by where in the poll interval the alias moves (uniform in [0, poll)), plus the flow
run's start (a Python process importing Prefect and MLflow: slower here, where PYTHONDONTWRITEBYTECODE=1 makes
every start compile its imports) and Triton's own poll and load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import torch
import tritonclient.http as triton_http

from components.evaluation.embedders import OnnxEmbedder
from components.export import export_onnx
from components.io.checksums import sha256_file
from components.models import get_model
from components.serving.lineage import Lineage
from components.serving.triton_server import TritonServer
from flows.record import register_model
from pipelines.params import load_params
from tests.servers import serve_flows, wait_for

OUT = Path("reports/bench/approval_latency.json")
NAME = "faceforge-embedder"


def _register(params_file: Path, onnx_path: Path) -> str:
    params = load_params(params_file)
    verdict = {"status": "pass", "passed": True, "reasons": []}
    with mlflow.start_run():
        return register_model(params, onnx_path, Lineage(model_sha256=sha256_file(onnx_path)), verdict)


def _answers(server: TritonServer, repo_version: int, faces: np.ndarray, expected: np.ndarray) -> bool:
    client = triton_http.InferenceServerClient(server.http_url)
    try:
        if client.get_model_metadata(NAME)["versions"] != [str(repo_version)]:
            return False
        request = triton_http.InferInput("input", list(faces.shape), "FP32")
        request.set_data_from_numpy(faces)
        got = client.infer(NAME, [request]).as_numpy("embedding")
    except Exception:  # noqa: BLE001 - not (re)loaded yet
        return False
    return bool(np.abs(got - expected).max() <= 1e-5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--moves", type=int, default=5)
    parser.add_argument("--poll-s", type=int, default=None, help="orchestration.approval_poll_s (default: params)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="faceforge-approval-"))
    text = Path("params.yaml").read_text()
    if args.poll_s:
        text = text.replace("approval_poll_s: 30", f"approval_poll_s: {args.poll_s}")
    (root / "params.yaml").write_text(text)
    poll_s = load_params(root / "params.yaml").orchestration.approval_poll_s
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.MlflowClient().create_experiment("faceforge", artifact_location=(root / "art").as_uri())
    mlflow.set_experiment(experiment_id=experiment)

    faces = np.random.default_rng(0).uniform(-1, 1, (4, 3, 112, 112)).astype(np.float32)
    versions, expected = [], {}
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = root / f"model{seed}.onnx"
        export_onnx(get_model("mbf", 512).eval(), path)
        version = _register(root / "params.yaml", path)
        versions.append(version)
        expected[version] = OnnxEmbedder(path).session.run(None, {"input": faces})[0]

    serving = root / "serving"
    watcher = serve_flows(root, uri, serving)
    client = mlflow.MlflowClient()
    samples = []
    with watcher:
        client.set_registered_model_alias(NAME, "champion", versions[0])  # warm-up: publishes repository v1
        wait_for(lambda: (serving / NAME / "config.pbtxt").is_file(), 300, "the first serving")
        repo_version = {versions[0]: 1}
        with TritonServer(serving, model_control="poll", poll_s=5) as triton:
            wait_for(lambda: _answers(triton, 1, faces, expected[versions[0]]), 120, "Triton answering")
            for move in range(args.moves):
                target = versions[(move + 1) % 2]
                moved = time.monotonic()
                client.set_registered_model_alias(NAME, "champion", target)
                if target not in repo_version:  # first time: a new repository version is published
                    repo_version[target] = len(repo_version) + 1
                wait_for(lambda t=target: _answers(triton, repo_version[t], faces, expected[t]), 300,
                         f"Triton answering MLflow version {target}", every_s=0.25)
                samples.append(round(time.monotonic() - moved, 2))
                print(f"move {move + 1}: champion -> v{target}: Triton answered after {samples[-1]} s", flush=True)
    result = {
        "what": "seconds from the champion alias move to Triton answering with that version (one machine: "
                "faceforge serve-flows + bundled Triton polling the folder every 5 s)",
        "approval_poll_s": poll_s, "triton_poll_s": 5, "samples_s": samples,
        "median_s": statistics.median(samples), "max_s": max(samples),
        "goal": "served within 60 s of the alias move",
        "pythondontwritebytecode": os.environ.get("PYTHONDONTWRITEBYTECODE") == "1", "cpus": os.cpu_count(),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
