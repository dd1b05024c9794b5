"""[J] The photo-in model: the publish stage builds it beside the embedder, the bundled Triton serves it, and
its answers equal the DVC stages' own (detect -> align -> embed the stored crop); bad bytes get a status, the
rest of the batch its answer; `faceforge client` verifies and identifies with the served threshold."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import pytest
import tritonclient.http as triton_http
import yaml
from typer.testing import CliRunner

from components.evaluation.embedders import OnnxEmbedder
from components.export import export_onnx
from components.io.checksums import sha256_file
from components.models import get_model
from components.recordio.dataset import FaceRecordDataset
from components.serving.client import FaceClient
from components.serving.photo import PhotoFaces
from components.serving.triton_server import TritonServer
from components.training.batchnorm import recalibrate_batchnorm
from faceforge.cli import app
from pipelines import align, detect, publish
from pipelines.params import load_params
from tests.bad_inputs import jpeg_bytes, png_with_claimed_size
from tests.scrape import delta, scrape
from tests.servers import wait_for
from tests.training_data import write_tiny_faces

pytestmark = pytest.mark.slow  # a heavy module: scheduled among the first (tests/conftest.py)

THRESHOLDS = {"far_1e-3": {"cosine": 0.31, "impostor_pairs": 20000, "impostors_above": 20},
              "far_1e-4": {"cosine": 0.42, "impostor_pairs": 20000, "impostors_above": 2},
              "far_1e-5": {"cosine": None, "impostor_pairs": 20000, "impostors_above": 0}}


@pytest.fixture(scope="module")
def served(sample_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The publish stage's candidate repository (python backend: what the bundled Triton loads), built after
    the detect and align stages ran on the sample photos, served by a real Triton."""
    import torch

    root = tmp_path_factory.mktemp("photo_serving")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        shutil.copytree(sample_raw, root / "data" / "raw")
        packed = write_tiny_faces(root / "data" / "packed", classes=3, per_class=6)
        torch.manual_seed(0)
        model = get_model("mbf", 128)
        recalibrate_batchnorm(model, FaceRecordDataset(packed, random_flip=False), samples=18, batch_size=6)
        export_onnx(model, root / "model.onnx")
        (root / "reports").mkdir()
        (root / "reports" / "eval.json").write_text(json.dumps({"ijbc": {"thresholds": THRESHOLDS}}))
        (root / "params.yaml").write_text(yaml.safe_dump({
            "detect": {"workers": 1},
            "publish": {"model": "model.onnx", "backend": "python", "validation_faces": 4, "validation_photos": 4}}))
        params = load_params(root / "params.yaml")
        detect.run(params)
        align.run(params)
        report = publish.run(params)
    with TritonServer(root / "data" / "publish" / "repository") as server:
        yield {"root": root, "server": server, "report": report, "params": params}


def _stage_faces(root: Path) -> pd.DataFrame:
    """The align stage's manifest: raw photo -> stored crop, with the detect stage's face."""
    return pd.read_parquet(root / "data" / "aligned" / "manifest.parquet")


def test_publish_builds_and_checks_both_models(served: dict[str, Any]) -> None:
    report, repo = served["report"], served["root"] / "data" / "publish" / "repository"
    assert (report["version"], report["pipeline_version"]) == (1, 1)
    check = report["infra_validation"]["pipeline"]
    assert check["photos"] == 4 and check["max_abs_diff"] <= 1e-5
    manifest = json.loads((repo / "faceforge-pipeline" / "1" / "faceforge.json").read_text())
    embedder = json.loads((repo / "faceforge-embedder" / "1" / "faceforge.json").read_text())
    # one manifest names the pair: the detector's and the embedder's checksums, and the code shipped with them
    assert manifest["embedder"]["version"] == 1
    assert manifest["embedder"]["sha256"] == embedder["sha256"]["model.onnx"]
    assert manifest["sha256"]["detector.onnx"] == manifest["detector"]["sha256"]
    assert {"model.py", "pipeline.json", "components/serving/photo.py", "components/detect/centerface.py",
            "components/align/similarity.py"} <= set(manifest["sha256"])
    config = triton_http.InferenceServerClient(served["server"].http_url).get_model_config("faceforge-pipeline")
    assert [(i["name"], i["data_type"]) for i in config["input"]] == [("image", "TYPE_STRING")]
    assert {o["name"]: o["data_type"] for o in config["output"]} == {
        "embedding": "TYPE_FP32", "bbox": "TYPE_FP32", "landmarks": "TYPE_FP32", "det_score": "TYPE_FP32",
        "status": "TYPE_STRING", "detail": "TYPE_STRING", "faces": "TYPE_INT32", "crop": "TYPE_UINT8",
        "model_sha256": "TYPE_STRING", "model_version": "TYPE_STRING"}
    assert config["parameters"]["threshold_far_1e-4"]["string_value"] == "0.42"
    assert config["parameters"]["threshold_far_1e-5"]["string_value"] == "null"
    assert json.loads(config["parameters"]["thresholds"]["string_value"]) == THRESHOLDS


def test_photo_in_embedding_equals_the_stages_crop_embedding(served: dict[str, Any]) -> None:
    """Served = the stages, exactly: the same verdict and face as the detect stage for every sample photo; the
    crop behind each served embedding, JPEG-encoded as the align stage encodes, is the stored crop byte for
    byte; and the served embedding is that crop's embedding (float tolerance)."""
    root, params = served["root"], served["params"]
    stages = _stage_faces(root)
    raw = root / "data" / "raw"
    photos = sorted(str(p.relative_to(raw)) for p in raw.rglob("*") if p.is_file())
    answers = dict(zip(photos, FaceClient(served["server"].grpc_url).embed([(raw / p).read_bytes() for p in photos],
                                                                           crops=True), strict=True))
    detections = pd.read_parquet(root / "data" / "detect" / "detections.parquet").set_index("path")
    for path in photos:
        assert answers[path].status == ("ok" if detections.loc[path, "status"] == "ok" else "no_face"), path
    spec = publish.pipeline_spec(params)
    assert spec is not None
    faces = PhotoFaces(spec.detector, spec.photo)
    crops = []
    for row in stages.itertuples():
        crop = faces((raw / row.path).read_bytes()).crop
        encoded = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, params.align.jpeg_quality])[1].tobytes()
        assert encoded == (root / "data" / "aligned" / row.aligned_path).read_bytes(), row.path
        np.testing.assert_array_equal(answers[row.path].crop, crop)  # what a gallery stores: the same pixels
        crops.append(crop)
        np.testing.assert_allclose(answers[row.path].bbox, row.bbox, atol=1e-3)
        np.testing.assert_allclose(answers[row.path].landmarks, row.landmarks, atol=1e-3)
    expected = OnnxEmbedder(root / "model.onnx")(np.stack(crops))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    served_rows = np.stack([answers[p].embedding for p in stages.path])
    # every answer names the embedder that made it: the candidate's file (not registered: no MLflow version)
    assert {(answers[p].model_sha256, answers[p].model_version) for p in stages.path} == \
        {(sha256_file(root / "model.onnx"), "")}
    assert len(crops) >= 40
    np.testing.assert_allclose(served_rows, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served_rows, axis=1), 1.0, atol=1e-5)


def test_bad_bytes_get_a_status_and_the_rest_of_the_batch_its_answer(served: dict[str, Any]) -> None:
    root, server = served["root"], served["server"]
    good = (root / "data" / "raw" / _stage_faces(root).path[0]).read_bytes()
    batch = [b"", good, good[: len(good) // 3], png_with_claimed_size(20000, 20000), b"this is not an image\n",
             jpeg_bytes(np.full((300, 400, 3), 128, np.uint8)), good]
    for url, protocol in ((server.grpc_url, "grpc"), (server.http_url, "http")):
        answers = FaceClient(url, protocol).embed(batch)  # type: ignore[arg-type]
        assert [a.status for a in answers] == ["bad_image", "ok", "bad_image", "bad_image", "bad_image", "no_face",
                                               "ok"], protocol
        details = [a.detail.split(":")[0] for a in answers]
        assert details[0] == "empty" and details[2] == "corrupt" and details[3] == "too_large"
        assert details[4] == "not_image"
        alone = FaceClient(url, protocol).embed([good])[0]
        np.testing.assert_allclose(answers[1].embedding, alone.embedding, atol=1e-6)
        assert not answers[0].embedding.any() and answers[0].det_score == 0.0
    assert triton_http.InferenceServerClient(server.http_url).is_model_ready("faceforge-pipeline")


def test_client_cli_verifies_and_identifies_with_the_served_threshold(served: dict[str, Any]) -> None:
    root, server = served["root"], served["server"]
    stages = _stage_faces(root)
    raw = root / "data" / "raw"
    first, second = (raw / p for p in stages[stages.identity == stages.identity[0]].path[:2])
    base = ["client", "--url", server.grpc_url]
    result = CliRunner().invoke(app, [*base, "verify", str(first), str(second)])
    assert result.exit_code == 0, result.output
    verdict = json.loads(result.output)
    assert verdict["threshold"] == 0.42 and verdict["far"] == 1e-4 and verdict["statuses"] == ["ok", "ok"]
    assert verdict["same"] == (verdict["score"] > 0.42)
    assert json.loads(CliRunner().invoke(app, [*base, "verify", str(first), str(first), "--far", "1e-3"]
                                         ).output)["same"] is True
    refused = CliRunner().invoke(app, [*base, "verify", str(first), str(second), "--far", "1e-5"])
    assert refused.exit_code == 1 and "no threshold at FAR 1e-05" in refused.output
    missing = CliRunner().invoke(app, [*base, "verify", str(first), str(root / "nope.jpg")])
    assert missing.exit_code == 1 and "nope.jpg: photo not found" in missing.output

    result = CliRunner().invoke(app, ["client", "--url", server.http_url, "--protocol", "http", "identify",
                                      "--gallery", str(raw), str(first), "--top-k", "3"])
    assert result.exit_code == 0, result.output
    matches = json.loads(result.output)[0]["matches"]
    assert len(matches) == 3 and matches[0]["identity"] == first.parent.name and matches[0]["score"] > 0.999
    down = CliRunner().invoke(app, ["client", "--url", "127.0.0.1:9", "embed", str(first)])
    assert down.exit_code == 1 and "127.0.0.1:9" in down.output


def _two_faces(left: bytes, right: bytes) -> bytes:
    """One photo holding two people side by side."""
    a, b = (cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) for data in (left, right))
    height = min(a.shape[0], b.shape[0])
    a, b = (cv2.resize(x, (x.shape[1] * height // x.shape[0], height)) for x in (a, b))
    return cv2.imencode(".png", np.hstack([a, np.zeros((height, height // 2, 3), np.uint8), b]))[1].tobytes()


def test_triton_metrics_count_a_known_mix_exactly(served: dict[str, Any]) -> None:
    """[P] A known mix of photos in one request; Triton's metrics endpoint counts each kind exactly, and the
    quality histograms hold the quality_filter measures of exactly the embedded faces."""
    root, server = served["root"], served["server"]
    raw = root / "data" / "raw"
    spec = publish.pipeline_spec(served["params"])
    assert spec is not None
    faces = PhotoFaces(spec.detector, spec.photo)
    stages = _stage_faces(root)
    # photos of one face each, of two people (a few sample photos hold a second, smaller detection)
    single = [row for row in stages.itertuples() if faces((raw / row.path).read_bytes()).faces == 1]
    good = [(raw / row.path).read_bytes() for row in single[:3]]
    other = next((raw / row.path).read_bytes() for row in single if row.identity != single[0].identity)
    mix = [*good, jpeg_bytes(np.full((300, 400, 3), 128, np.uint8)), good[0][: len(good[0]) // 3], b"",
           _two_faces(good[0], other)]
    before = scrape(server.metrics_url)
    answers = FaceClient(server.grpc_url).embed(mix)
    after = scrape(server.metrics_url)
    assert [a.status for a in answers] == ["ok"] * 3 + ["no_face", "bad_image", "bad_image", "ok"]
    v = {"version": "triton-1"}  # a published candidate that was never registered

    def grew(name: str, **labels: str) -> float:
        return delta(before, after, name, **v, **labels)

    assert grew("faceforge_photo_requests_total") == 1
    assert {s: grew("faceforge_photos_total", status=s) for s in ("ok", "no_face", "bad_image", "align_failed")} \
        == {"ok": 4, "no_face": 1, "bad_image": 2, "align_failed": 0}
    assert {n: grew("faceforge_photo_faces_total", faces=n) for n in ("0", "1", "2+")} == {"0": 1, "1": 3, "2+": 1}
    assert {r: grew("faceforge_photo_rejects_total", reason=r) for r in ("no_face", "corrupt", "empty")} \
        == {"no_face": 1, "corrupt": 1, "empty": 1}
    direct = [faces(photo) for photo in mix]
    for measure in ("blur", "brightness", "yaw", "pitch", "interocular"):
        assert grew(f"faceforge_face_{measure}_count") == 4, measure
        expected = sum(face.quality[measure] for face in direct if face.status == "ok")
        assert grew(f"faceforge_face_{measure}_sum") == pytest.approx(expected, rel=1e-6), measure
    assert grew("faceforge_face_det_score_count") == 4
    assert grew("faceforge_face_blur_bucket", le="+Inf") == 4
    # the bucket bounds the alert rules select (infra/prometheus/alerts.yml), spelt as Triton writes them
    for measure, bound in (("blur", "20"), ("interocular", "16"), ("yaw", "0.45"), ("brightness", "30")):
        assert (f"faceforge_face_{measure}_bucket", frozenset({**v, "le": bound}.items())) in after, measure
    # Triton's own per-model metrics are on the same endpoint, and agree (Triton counts once the response is out)
    wait_for(lambda: delta(before, scrape(server.metrics_url), "nv_inference_request_success_total",
                           model="faceforge-pipeline", version="1") == 1, 10, "Triton counting the request")
