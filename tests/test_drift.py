"""[P] Drift without labels, on a real Triton: the eval stage keeps a version's reference, the served photo-in
model captures its live traffic, and the drift check compares them. Clean traffic of held-out people raises no
alarm over 20 windows (the false-alarm rate measured); traffic with the hard set's degradations is flagged, and
the drift flow then records its report and starts the retrain deployment with the finding as its reason."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import mlflow
import numpy as np
import pytest
import yaml

from components.augment.degrade import degrade
from components.io.checksums import sha256_file
from components.monitoring.capture import CaptureWriter, read_window
from components.monitoring.reference import Reference
from components.sample.eval_sets import detect_sources, write_holdout_photos
from components.sample.orl import IMAGES_PER_IDENTITY, load_orl_face
from components.sample.raw_photos import compose_photo, encode_jpeg
from components.serving.client import FaceClient
from components.serving.lineage import Lineage
from components.serving.store import LocalStore
from components.serving.triton_config import ServingOptions
from components.serving.triton_server import TritonServer
from flows.drift import check_window
from flows.record import register_model
from pipelines import eval as eval_stage
from pipelines.params import load_params
from pipelines.publish import pipeline_spec, push
from tests.test_gallery import _embedder

pytestmark = pytest.mark.slow  # a heavy module: scheduled among the first (tests/conftest.py)

SUBJECTS = (31, 32, 33, 34)  # the eval_sets fixture's held-out people
WINDOW = 24  # photos per window
CLEAN_WINDOWS = 20


def _clean(rng: np.random.Generator, count: int) -> list[bytes]:
    """Fresh photos of the held-out people, made as `faceforge sample` makes their reference photos."""
    faces = [load_orl_face(SUBJECTS[int(rng.integers(len(SUBJECTS)))], int(rng.integers(IMAGES_PER_IDENTITY)) + 1)
             for _ in range(count)]
    return [encode_jpeg(compose_photo(rng, face, None, 480, 360), 92) for face in faces]


def _degraded(rng: np.random.Generator, count: int, sources: dict[int, list[Any]]) -> list[bytes]:
    """The same people's photos after two of the hard set's degradations each (blur, low resolution, strong
    JPEG, occlusion, uneven light, rotation: components/augment/degrade.py)."""
    photos = []
    for _ in range(count):
        people = sources[SUBJECTS[int(rng.integers(len(SUBJECTS)))]]
        source = people[int(rng.integers(len(people)))]
        rgb, _, _ = degrade(rng, source.rgb, source.landmarks, count=2)
        photos.append(encode_jpeg(compose_photo(rng, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), None, 480, 360), 92))
    return photos


@pytest.fixture(scope="module")
def traffic(eval_sets: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Version 1: evaluated by the eval stage (its reference kept), registered in MLflow with it, served with
    its photo-in model by a real Triton that captures its traffic; then the windows of traffic, sent."""
    root = tmp_path_factory.mktemp("drift")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        mlflow.set_experiment(experiment_id=mlflow.MlflowClient().create_experiment(
            "faceforge", artifact_location=(root / "artifacts").as_uri()))
        model = _embedder(root / "model.onnx", 0)
        # the reference: twenty photos of each held-out person, each source photo placed twice
        write_holdout_photos(root / "reference", SUBJECTS, per_subject=2 * IMAGES_PER_IDENTITY, seed=5)
        tree = yaml.safe_load((Path(__file__).parents[1] / "params.yaml").read_text())
        tree["eval"] |= {"model": "model.onnx", "ijbc_root": str(eval_sets / "ijbc_mini"),
                         "ijbc_hard_root": None, "verification": {}, "reference_photos": str(root / "reference")}
        tree["detect"] |= {"input_size": 320}  # photos of 480 x 360: a site with small photos, a cheaper detector
        # windows of 24 photos (a site with little traffic); Triton captures where the drift flow reads
        tree["monitoring"] |= {"min_faces": 20, "capture": str(root / "capture"), "permutations": 1000}
        (root / "params.yaml").write_text(yaml.safe_dump(tree))
        params = load_params(root / "params.yaml")
        report = eval_stage.run(params)
        with mlflow.start_run():
            mlflow.log_artifact(str(root / "data" / "eval" / "reference.npz"), "eval")
            version = register_model(params, model, Lineage(model_sha256=sha256_file(model)),
                                     {"status": "pass", "passed": True, "reasons": []})
        spec = pipeline_spec(params)
        assert spec is not None and version == "1"
        repo = root / "serving"
        push(LocalStore(repo), params.publish.model_name, model, ServingOptions(backend="python"),
             Lineage(model_sha256=sha256_file(model), mlflow_model_version=version), spec)
        rng = np.random.default_rng(7)
        sources = detect_sources(SUBJECTS)
        windows: list[tuple[str, float, float]] = []
        with TritonServer(repo, capture=params.monitoring.capture,
                          capture_retention_days=params.monitoring.capture_retention_days) as server:
            client = FaceClient(server.grpc_url)
            for kind in ["clean"] * CLEAN_WINDOWS + ["degraded"] * 3:
                photos = _clean(rng, WINDOW) if kind == "clean" else _degraded(rng, WINDOW, sources)
                since = time.time()
                for start in range(0, WINDOW, 4):  # four photos a request, as a client batching uploads
                    client.embed(photos[start:start + 4])
                windows.append((kind, since, time.time()))
        # Triton flushed the capture when it unloaded the model
        yield {"root": root, "params": params, "report": report, "windows": windows}
    shutil.rmtree(root / "capture", ignore_errors=True)


def test_the_capture_keeps_nothing_past_its_retention_and_a_window_reads_only_its_rows(tmp_path: Path) -> None:
    """Chunks older than the retention are deleted by the next write, whether or not a drift flow runs; a
    window holds the rows of its time span, whichever chunks they were written in."""
    now = time.time()
    old = CaptureWriter(tmp_path, "3", 4)
    old.add(now - 8 * 86400, "ok", 1, {"blur": 50.0}, np.ones(4, np.float32))
    old.flush()
    writer = CaptureWriter(tmp_path, "3", 4, retention_days=7)
    for i, status in enumerate(["ok", "no_face", "ok", "ok"]):
        writer.add(now - 60 + 20 * i, status, int(status == "ok"), {"blur": 10.0 * i}, None if status != "ok"
                   else np.full(4, i, np.float32))
        if i == 1:
            writer.flush()  # two chunks
    writer.flush()
    assert len(list((tmp_path / "3").glob("*.npz"))) == 2  # the 8-day-old chunk is gone
    window = read_window(tmp_path, "3", now - 50, now + 1)  # the last three rows
    assert (window.photos, window.faces, window.status) == (3, 2, {"no_face": 1, "ok": 2})
    assert window.measures["blur"].tolist() == [20.0, 30.0] and window.embeddings[:, 0].tolist() == [2.0, 3.0]
    assert not list(tmp_path.rglob("*.partial"))


def test_the_eval_stage_keeps_the_reference_from_the_served_path(traffic: dict[str, Any]) -> None:
    reference = Reference.load(traffic["root"] / "data" / "eval" / "reference.npz")
    assert traffic["report"]["reference"]["photos"] == len(SUBJECTS) * 2 * IMAGES_PER_IDENTITY
    assert reference.faces >= 0.9 * reference.photos and reference.embeddings.shape[1] == 128
    np.testing.assert_allclose(np.linalg.norm(reference.embeddings, axis=1), 1.0, atol=1e-5)
    assert len(reference.genuine) and len(reference.impostor) and "far_1e-3" in reference.thresholds
    assert set(reference.measures) == {"blur", "brightness", "yaw", "pitch", "interocular", "det_score"}


def test_clean_windows_raise_no_alarm_and_degraded_ones_are_flagged(traffic: dict[str, Any]) -> None:
    params, windows = traffic["params"], traffic["windows"]
    results = [(kind, check_window(params, "1", since, until)[0]) for kind, since, until in windows]
    for _, result in results:
        assert result["verdict"] in ("quiet", "drift"), json.dumps(result["window"])  # a verdict for each
        assert result["window"]["photos"] == WINDOW  # each photo captured once, in its own window
    clean = [r for kind, r in results if kind == "clean"]
    false_alarms = sum(r["verdict"] == "drift" for r in clean)
    print(f"drift: {false_alarms} false alarms in {len(clean)} clean windows "
          f"(alpha {params.monitoring.alpha} per check)")
    assert false_alarms <= 1, [r["reasons"] for r in clean if r["verdict"] == "drift"]
    degraded = [r for kind, r in results if kind == "degraded"]
    assert [r["verdict"] for r in degraded] == ["drift"] * 3, [r["tests"] for r in degraded]


def test_the_drift_flow_reports_and_starts_a_retrain_with_the_reason(traffic: dict[str, Any],
                                                                    prefect_api: None) -> None:
    from prefect.client.orchestration import get_client

    from flows.drift import RETRAIN_DEPLOYMENT, drift
    from flows.retrain import retrain

    root, windows = traffic["root"], traffic["windows"]
    retrain.to_deployment(name=RETRAIN_DEPLOYMENT.split("/")[1]).apply()
    tree = yaml.safe_load((root / "params.yaml").read_text())

    def check(since: float, until: float) -> dict[str, Any]:
        tree["monitoring"]["window_minutes"] = (until - since) / 60
        (root / "params.yaml").write_text(yaml.safe_dump(tree))
        return drift(str(root), until=until)

    quiet = check(windows[0][1], windows[1][2])  # two clean windows
    assert quiet["verdicts"] == {"1": "quiet"} and quiet["retrain_flow_run_id"] is None
    flagged = check(windows[-3][1], windows[-1][2])  # the three degraded ones
    assert flagged["verdicts"] == {"1": "drift"} and flagged["retrain_flow_run_id"]
    assert flagged["reason"].startswith("drift: version 1: ")

    async def retrain_run() -> Any:
        async with get_client() as client:
            return await client.read_flow_run(flagged["retrain_flow_run_id"])

    import asyncio

    run = asyncio.run(retrain_run())
    assert run.parameters["reason"] == flagged["reason"] and "drift" in run.tags
    # the report is in MLflow: the verdict, the tests' p-values and the plot
    client = mlflow.MlflowClient()
    recorded = client.get_run(flagged["mlflow_run_id"])
    assert recorded.data.tags["drift.v1"] == "drift"
    assert recorded.data.metrics["v1.blur.p_value"] < 0.01 and "v1.embeddings.p_value" in recorded.data.metrics
    sizes = {a.path: a.file_size for a in client.list_artifacts(recorded.info.run_id, "drift")}
    assert set(sizes) == {"drift/drift_v1.json", "drift/drift_v1.png"} and sizes["drift/drift_v1.png"] > 10_000
    report = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=recorded.info.run_id,
                                                                 artifact_path="drift/drift_v1.json")).read_text())
    assert report["verdict"] == "drift" and report["window"]["photos"] == 3 * WINDOW
