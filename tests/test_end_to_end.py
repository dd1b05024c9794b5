"""[F] The whole loop, as a team runs it, on the bundled sample data and nothing mocked:

retrain flow (Prefect, DVC stage by stage) -> MLflow run + registered version + gate pass -> ``champion`` alias
set through MlflowClient exactly as the UI does -> promote flow -> repository on S3 (moto's server) and in a
folder -> the real Triton loads it and answers like ONNX Runtime. Then a worse model: a stage failure on the way
(earlier outputs intact, the rerun resumes from DVC's cache), the gate fails, nothing is published, the champion
stays. Params are shrunk so the whole loop fits CI (a few minutes on 2 cores).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

REPO = Path(__file__).parents[1]
NAME = "faceforge-embedder"

SMALL: dict[str, Any] = {
    "data": {"sample_identities": 8, "sample_images_per_identity": 6, "eval_identities": 4,
             "eval_templates_per_identity": 6, "eval_bin_pairs": 40, "second_face_fraction": 0.0},
    "quality_filter": {"min_identities": 2},
    "train": {"embedding_size": 128, "epochs": 1, "max_steps": 6, "batch_size": 16, "warmup_steps": 0, "num_workers": 1,
              "checkpoint_every": 100, "log_every": 1, "bn_recalibration_samples": 48},
    "eval": {"fars": [1.0e-3, 1.0e-2, 1.0e-1], "batch_size": 32},
    "export": {"parity_faces": 8},
    "quantize": {"calibration_faces": 16, "method": "minmax", "far": 1.0e-1, "max_accuracy_drop": 0.2,
                 "max_tar_drop": 0.5},
    "publish": {"backend": "python", "validation_faces": 4},  # the bundled Triton has the python backend
    "gate": {"metric": "ijbc.tar_at_far_1e-1", "tracked": ["verification.orl_holdout.accuracy"],
             "floors": {"ijbc.tar_at_far_1e-1": 0.0, "verification.orl_holdout.accuracy": 0.0}},
}
WORSE = {"train": {"lr": 1.0e-6, "embedding_size": 8}}  # barely trained and 8-d: must lose to the champion


def _merge(tree: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    for key, value in update.items():
        tree[key] = _merge(tree.get(key, {}), value) if isinstance(value, dict) else value
    return tree


def _set_params(root: Path, update: dict[str, Any]) -> None:
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(_merge(yaml.safe_load(path.read_text()), update), sort_keys=False))


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh checkout's pipeline files in a scratch DVC repository, with the sample data written."""
    root = tmp_path_factory.mktemp("project")
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    for folder in ("pipelines", "components"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=root, check=True)
    shutil.copytree(REPO / ".dvc" / "plots", root / ".dvc" / "plots")
    _set_params(root, SMALL)
    subprocess.run([str(Path(sys.executable).parent / "faceforge"), "sample"], cwd=root, check=True,
                   capture_output=True)
    return root


def _client(uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _served_embeddings(repository: Path, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from components.serving.triton_server import TritonServer
    from components.serving.validation import query

    with TritonServer(repository) as server:
        return query(server, NAME, faces, 4)


@pytest.mark.slow
@pytest.mark.timeout(1200)  # ~7 min on 2 cores; the suite's 600 s default is for single-stage tests
def test_retrain_approve_promote_serve_then_stop_a_worse_model(project: Path, prefect_api: None, s3: Any,
                                                               tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from components.evaluation.embedders import OnnxEmbedder, to_input
    from components.export.faces import sample_faces
    from components.io.raw_folder import sha256_file
    from components.serving.repository import complete_versions, read_manifest, served
    from components.serving.store import LocalStore, open_store
    from flows.dvc_stages import StageFailed
    from flows.promote import promote, rollback
    from flows.retrain import retrain
    from flows.serving import PromotionRefused

    uri = f"sqlite:///{project / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(project)
    client = _client(uri)

    # 1. Scheduled retraining: every stage runs, the run is recorded, the model registered, the gate passes.
    first = retrain(workspace=str(project))
    assert first["gate"] == "pass", first["reasons"]
    assert first["stages_run"] == ["detect", "align", "quality_filter", "pack", "train", "eval", "export",
                                   "quantize", "publish"]
    version = client.get_model_version(NAME, first["model_version"])
    assert version.tags["gate.status"] == "pass" and version.aliases == ["challenger"]
    assert version.tags["model_sha256"] == sha256_file(project / "data" / "export" / "model.onnx")
    run = client.get_run(first["run_id"])
    assert run.data.params["train.backbone"] == "mbf" and run.data.tags["gate.status"] == "pass"
    assert run.data.metrics["eval.ijbc.tar_at_far_1e-1"] > 0
    assert {"quantize.embedding_agreement.mean_cosine", "quantize.drop.ijbc.tar_at_far_1e-1"} <= set(run.data.metrics)
    assert len(client.get_metric_history(first["run_id"], "train.loss")) == 6  # one point per logged step
    artifacts = {a.path for a in client.list_artifacts(first["run_id"])}
    assert {"model_card.md", "eval", "data_docs", "reports", "train"} <= artifacts
    assert {a.path for a in client.list_artifacts(first["run_id"], "eval")} >= {"eval/roc.png", "eval/tar_far.md"}
    card = client.download_artifacts(first["run_id"], "model_card.md", str(tmp_path))
    assert version.tags["dvc_data_hash"] in Path(card).read_text()
    dataset = run.inputs.dataset_inputs[0]
    assert dataset.dataset.digest == version.tags["dvc_data_hash"][:36]
    assert client.get_registered_model(NAME).latest_versions  # visible on the Models page
    from prefect.artifacts import Artifact  # what the Prefect UI shows on the flow run

    assert "ijbc.tar_at_far_1e-1" in Artifact.get("faceforge-gate-metrics").data
    retrain_report = Artifact.get("faceforge-retrain").data
    assert "Promotion gate: **PASS**" in retrain_report and f"#/models/{NAME}/versions/1" in retrain_report

    # 2. Nothing approved yet: promote refuses and says where to click.
    local = tmp_path / "serving"
    with pytest.raises(PromotionRefused, match="pencil next to Aliases"):
        promote(targets=[str(local)], workspace=str(project))

    # 3. A person approves version 1 (the UI's "Add alias" is this call), then promote serves it.
    client.set_registered_model_alias(NAME, "champion", first["model_version"])
    result = promote(targets=["s3://models/triton", str(local)], workspace=str(project))
    assert [t["version"] for t in result["targets"]] == [1, 1]
    for store in (open_store("s3://models/triton"), LocalStore(local)):
        assert served(store, NAME) == [1]
        manifest = read_manifest(store, NAME, 1)
        assert manifest["sha256"]["model.onnx"] == version.tags["model_sha256"]
        assert manifest["lineage"]["mlflow_model_version"] == first["model_version"]
    assert client.get_model_version(NAME, "1").aliases == ["champion"]  # challenger no more: it was approved
    again = promote(targets=[str(local)], workspace=str(project))  # idempotent: the schedule may fire twice
    assert again["targets"][0]["already_served"] and complete_versions(LocalStore(local), NAME) == [1]

    # 4. The real Triton serves the promoted folder and answers like ONNX Runtime, over HTTP and gRPC.
    faces = to_input(sample_faces(project / "data" / "packed", 6, seed=2))
    reference = OnnxEmbedder(local / NAME / "1" / "model.onnx").session.run(None, {"input": faces})[0]
    via_http, via_grpc = _served_embeddings(local, faces)
    assert np.abs(via_http - reference).max() <= 1e-5 and np.abs(via_grpc - reference).max() <= 1e-5

    # 5. A worse model, and on the way a stage fails: earlier outputs stay, the rerun resumes from DVC's cache.
    exported = sha256_file(project / "data" / "export" / "model.onnx")
    _set_params(project, WORSE | {"eval": {"ijbc_root": "data/eval_sets/missing"}})
    with pytest.raises(StageFailed, match="'eval'"):
        retrain(workspace=str(project))
    assert (project / "data" / "train" / "backbone.pth").is_file()
    assert sha256_file(project / "data" / "export" / "model.onnx") == exported  # untouched
    _set_params(project, {"eval": {"ijbc_root": "data/eval_sets/ijbc_mini"}})
    second = retrain(workspace=str(project))
    assert second["stages_run"] == ["eval", "export", "quantize", "publish"]  # train came from DVC
    assert second["gate"] == "fail" and any(r.startswith("primary_metric") for r in second["reasons"])
    assert second["champion_version"] == first["model_version"]
    failed = client.get_model_version(NAME, second["model_version"])
    assert failed.tags["gate.status"] == "fail" and "primary_metric" in failed.tags["gate.reasons"]
    assert failed.aliases == []  # not a challenger
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == first["model_version"]
    assert complete_versions(LocalStore(local), NAME) == [1]  # nothing published
    assert complete_versions(open_store("s3://models/triton"), NAME) == [1]

    # 6. Someone points `champion` at the failed version: promote refuses unless forced with a reason.
    client.set_registered_model_alias(NAME, "champion", second["model_version"])
    with pytest.raises(PromotionRefused, match="did not pass the gate"):
        promote(targets=[str(local)], workspace=str(project))
    with pytest.raises(ValueError, match="--force needs --reason"):
        promote(targets=[str(local)], force=True, workspace=str(project))
    forced = promote(targets=[str(local)], force=True, reason="hotfix for a demo", workspace=str(project))
    assert forced["forced"] and forced["targets"][0]["version"] == 2
    assert client.get_model_version(NAME, second["model_version"]).tags["promote.reason"] == "hotfix for a demo"

    # 7. Rollback serves version 1 again and the champion alias follows it back.
    back = rollback(target=str(local), workspace=str(project))
    assert back["served_version"] == 1 and back["champion"] == first["model_version"]
    assert served(LocalStore(local), NAME) == [1]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == first["model_version"]
