"""[F] What the approver sees: the MLflow UI, started on 127.0.0.1, rendered by headless Chromium, shows the
registered embedder and its aliases. Skipped (with the reason) where no Chromium is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from onnx import TensorProto, helper
from PIL import Image

from components.serving.triton_server import free_port

NAME = "faceforge-embedder"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def _registry(db: Path, artifacts: Path) -> None:
    """Two versions of a tiny ONNX embedder, one `champion` and one `challenger`, as the flows leave them."""
    import mlflow
    import mlflow.onnx

    from flows.record import signature

    uri = f"sqlite:///{db}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient(uri, uri)
    experiment = client.create_experiment("faceforge", artifact_location=artifacts.as_uri())  # not ./mlruns
    mlflow.set_experiment(experiment_id=experiment)
    graph = helper.make_graph([helper.make_node("Identity", ["input"], ["embedding"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    for _ in range(2):
        with mlflow.start_run():
            mlflow.onnx.log_model(model, name="model", signature=signature(model), registered_model_name=NAME,
                                  pip_requirements=["onnxruntime"])
    client.set_registered_model_alias(NAME, "champion", "1")
    client.set_registered_model_alias(NAME, "challenger", "2")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on this machine (Debian: apt-get install chromium)")
def test_mlflow_ui_shows_the_model_and_its_aliases(tmp_path: Path) -> None:
    _registry(tmp_path / "mlflow.db", tmp_path / "artifacts")
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline and server.poll() is None, "MLflow UI did not start"
            time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/#/models/{NAME}"
        browser = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                   "--window-size=1400,900", "--virtual-time-budget=20000", f"--user-data-dir={tmp_path / 'c'}"]
        dom = subprocess.run([*browser, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
        shot = tmp_path / "models_page.png"
        subprocess.run([*browser, f"--screenshot={shot}", url], capture_output=True, timeout=180, check=True)
    finally:
        server.terminate()
        server.wait(30)
    assert NAME in dom and "champion" in dom and "challenger" in dom, dom[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.shape == (900, 1400) and pixels.std() > 10  # a rendered page, not a blank one
