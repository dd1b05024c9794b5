"""[O] The gallery: people enrolled through the served photo-in model, kept comparable across model swaps.

One registry (MLflow on SQLite) with two registered versions of different embedders, a serving folder the
promotion writes, and a real Triton polling it: enrol, identify, verify, list and remove through the CLI; bad
photos change nothing; a promotion re-embeds the gallery before the new version answers, with identify
requests in flight; a rollback brings the old templates back; a migration killed halfway finishes on a rerun.
The same gallery code then runs against Debian's PostgreSQL.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import mlflow
import numpy as np
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from components.gallery.database import faces, templates
from components.gallery.gallery import Gallery, GalleryError, ModelId
from components.gallery.reembed import CropEmbedder
from components.io.checksums import sha256_file
from components.serving.client import FaceClient
from components.serving.lineage import Lineage
from components.serving.triton_server import TritonServer, free_port
from faceforge.cli import app
from flows.promotion import serve_champion
from flows.record import register_model
from flows.server_process import ServerProcess, answers
from flows.serving import rollback_serving
from pipelines.params import Params, load_params
from tests.bad_inputs import jpeg_bytes
from tests.scrape import Series, delta, scrape
from tests.servers import wait_for

pytestmark = pytest.mark.slow  # a heavy module: scheduled among the first (tests/conftest.py)

NAME = "faceforge-embedder"
THRESHOLDS = {"far_1e-4": {"cosine": 0.5, "impostor_pairs": 20000, "impostors_above": 2}}


def _embedder(path: Path, seed: int) -> Path:
    """A small real backbone (random weights, batch-norm statistics from real faces), exported to ONNX."""
    import torch

    from components.export import export_onnx
    from components.models import get_model
    from components.recordio.dataset import FaceRecordDataset
    from components.training.batchnorm import recalibrate_batchnorm
    from tests.training_data import write_tiny_faces

    packed = write_tiny_faces(path.parent / f"packed{seed}", classes=3, per_class=6)
    torch.manual_seed(seed)
    model = get_model("mbf", 128)
    recalibrate_batchnorm(model, FaceRecordDataset(packed, random_flip=False), samples=18, batch_size=6)
    export_onnx(model, path)
    return path


def _register(params: Params, model: Path, compatibility: dict[str, Any] | None = None) -> str:
    lineage = Lineage(model_sha256=sha256_file(model), thresholds=THRESHOLDS)
    with mlflow.start_run():
        return register_model(params, model, lineage, {"status": "pass", "passed": True, "reasons": [],
                                                       "compatibility": compatibility})


def _approve(version: str) -> None:
    mlflow.MlflowClient().set_registered_model_alias(NAME, "champion", version)


@pytest.fixture(scope="module")
def workspace(sample_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Version 1 served by a real Triton polling the serving folder; version 2 registered, not approved."""
    root = tmp_path_factory.mktemp("gallery")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        for name in ("FACEFORGE_SERVING_REPOSITORY", "FACEFORGE_GALLERY_DATABASE", "FACEFORGE_GALLERY_CROPS"):
            mp.delenv(name, raising=False)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        mlflow.set_experiment(experiment_id=mlflow.MlflowClient().create_experiment(
            "faceforge", artifact_location=(root / "artifacts").as_uri()))
        shutil.copy(Path(__file__).parents[1] / "params.yaml", root / "params.yaml")
        params = load_params(root / "params.yaml", ["publish.backend=python"])
        models = [_embedder(root / "a.onnx", 0), _embedder(root / "b.onnx", 1)]
        versions = [_register(params, m) for m in models]
        _approve(versions[0])
        serving = root / "serving"
        serve_champion(params, [str(serving)])
        with TritonServer(serving, model_control="poll") as server:
            yield {"root": root, "params": params, "server": server, "models": models, "versions": versions,
                   "serving": serving, "photos": sorted(p for p in sample_raw.rglob("*") if p.is_file())}


def _cli(ws: dict[str, Any], *args: str) -> Any:
    return CliRunner().invoke(app, ["gallery", "--url", ws["server"].grpc_url, *args])


def _people(ws: dict[str, Any]) -> dict[str, list[Path]]:
    """Each sample identity's photos that show only them (some sample photos have a bystander: enrolment
    refuses those, as it should)."""
    if "people" not in ws:
        faces = FaceClient(ws["server"].grpc_url).embed([p.read_bytes() for p in ws["photos"]])
        ws["people"] = {}
        for photo, face in zip(ws["photos"], faces, strict=True):
            if face.status == "ok" and face.faces == 1:
                ws["people"].setdefault(photo.parent.name, []).append(photo)
    return ws["people"]


def _gallery_state(root: Path) -> tuple[str, list[str]]:
    """What a failed request must leave alone: the listing and every stored crop."""
    listing = json.dumps(Gallery("sqlite:///gallery/gallery.db", "gallery/crops").list(), sort_keys=True)
    return listing, sorted(p.name for p in (root / "gallery" / "crops").rglob("*.png"))


def test_enrol_identify_verify_list_remove_through_the_served_model(workspace: dict[str, Any]) -> None:
    ws, root = workspace, workspace["root"]
    people = _people(ws)
    alice, bob, carol = sorted(people)[:3]
    for person in (alice, bob):
        done = _cli(ws, "enrol", person, *map(str, people[person][:3]), "--json")
        assert done.exit_code == 0, done.output
        assert json.loads(done.output)["enrolled"] == 3
    again = json.loads(_cli(ws, "enrol", alice, str(people[alice][0]), "--json").output)
    assert again == {"identity": alice, "enrolled": 0, "already_enrolled": 1,
                     "template_version": {"version": ws["versions"][0], "sha256": sha256_file(ws["models"][0])}}

    listed = json.loads(_cli(ws, "list", "--json").output)
    assert [(i["identity"], i["faces"]) for i in listed["identities"]] == [(alice, 3), (bob, 3)]
    assert [(v["model_version"], v["state"], v["active"], v["templates"]) for v in listed["versions"]] == \
        [(ws["versions"][0], "ready", True, 6)]

    # an enrolled photo is its own best match; the answer names both versions, and they are the served one
    answer = json.loads(_cli(ws, "identify", str(people[bob][1]), "--top-k", "2", "--json").output)
    served = {"version": ws["versions"][0], "sha256": sha256_file(ws["models"][0])}
    assert answer["probe_version"] == answer["template_version"] == served
    assert [m["identity"] for m in answer["matches"]] == [bob, alice] and answer["matches"][0]["score"] > 0.999
    assert answer["threshold"] == 0.5 and answer["identity"] == bob
    same = _cli(ws, "verify", alice, str(people[alice][0]))
    assert same.exit_code == 0 and same.output.startswith(f"{people[alice][0]}: same {alice}"), same.output
    assert json.loads(_cli(ws, "verify", bob, str(people[alice][0]), "--json").output)["score"] < 0.999

    # every template row names identity, model version and checksum; the stored crop re-embeds to the template
    gallery = Gallery("sqlite:///gallery/gallery.db", "gallery/crops")
    with gallery.engine.connect() as connection:
        rows = connection.execute(select(templates)).all()
        crops = dict(connection.execute(select(faces.c.id, faces.c.crop_sha256)).all())
    assert {(r.identity, r.model_version, r.model_sha256) for r in rows} == \
        {(p, ws["versions"][0], served["sha256"]) for p in (alice, bob)}
    embed = CropEmbedder(ws["models"][0])
    for row in rows:
        crop = gallery.crops.get(crops[row.face_id])
        assert crop.shape == (112, 112, 3)
        np.testing.assert_allclose(embed(crop[None])[0], np.frombuffer(row.embedding, np.float32), atol=2e-5)

    # bad requests: one line each, nothing changed
    before = _gallery_state(root)
    pair = [cv2.resize(cv2.imread(str(p)), (160, 200)) for p in (people[carol][0], people[alice][0])]
    (root / "two.jpg").write_bytes(jpeg_bytes(np.ascontiguousarray(np.hstack(pair)[:, :, ::-1])))
    (root / "blank.jpg").write_bytes(jpeg_bytes(np.full((120, 120, 3), 128, np.uint8)))
    (root / "corrupt.jpg").write_bytes(people[carol][0].read_bytes()[:300])
    for photo, says in (("two.jpg", "2 faces found"), ("blank.jpg", "no_face"), ("corrupt.jpg", "bad_image")):
        refused = _cli(ws, "enrol", carol, str(people[carol][2]), str(root / photo))
        assert refused.exit_code == 1 and says in refused.output and "nothing enrolled" in refused.output, \
            refused.output
        assert len(refused.output.strip().splitlines()) == 1
    taken = _cli(ws, "enrol", carol, str(people[alice][0]))
    assert taken.exit_code == 1 and f"already enrolled as '{alice}'" in taken.output
    unknown = _cli(ws, "remove", "nobody")
    assert unknown.exit_code == 1 and "no such identity" in unknown.output
    missing = _cli(ws, "identify", str(root / "nope.jpg"))
    assert missing.exit_code == 1 and "nope.jpg: photo not found" in missing.output
    assert _gallery_state(root) == before

    gone = json.loads(_cli(ws, "remove", bob, "--json").output)
    assert gone == {"identity": bob, "faces_removed": 3, "templates_removed": 3}
    assert [i["identity"] for i in json.loads(_cli(ws, "list", "--json").output)["identities"]] == [alice]
    assert len(_gallery_state(root)[1]) == 3


def test_probes_of_a_version_without_templates_are_refused_naming_both(workspace: dict[str, Any]) -> None:
    gallery = Gallery("sqlite:///gallery/gallery.db", "gallery/crops")
    other = ModelId("f" * 64, "9")
    with pytest.raises(GalleryError, match=r"embedded by version 9 \(sha256 ffffffffffff\).*holds templates of "
                                           rf"version {workspace['versions'][0]} "):
        gallery.templates_of(other)


def test_the_gallery_service_over_http_with_accounts(workspace: dict[str, Any]) -> None:
    """`faceforge gallery serve` as a team runs it: an enroller may enrol and remove, a reader only identify
    and verify, nobody without an account anything; refusals are one line and change nothing."""
    import base64

    import httpx

    from tests.servers import BIN, server_env

    ws, root = workspace, workspace["root"]
    people = _people(ws)
    dave = sorted(people)[3]
    port = free_port()
    env = server_env(FACEFORGE_GALLERY_ENROLLER_PASSWORD="enrol-secret",
                     FACEFORGE_GALLERY_READER_PASSWORD="read-secret")
    base = f"http://127.0.0.1:{port}"
    service = ServerProcess("gallery service", [str(BIN / "faceforge"), "gallery", "--url", ws["server"].grpc_url,
                                                "serve", "--port", str(port)], env, root / "gallery-service.log",
                            answers(f"{base}/healthz"), cwd=root)
    enroller, reader = ("faceforge-enroller", "enrol-secret"), ("faceforge-reader", "read-secret")
    photos = {"photos": [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()}
                         for p in people[dave][:2]]}
    with service, httpx.Client(base_url=base, timeout=60) as http:
        assert http.get("/v1/identities").status_code == 401
        assert http.post(f"/v1/identities/{dave}", json=photos, auth=("faceforge-reader", "wrong")).status_code == 401
        refused = http.post(f"/v1/identities/{dave}", json=photos, auth=reader)
        assert refused.status_code == 403 and "may identify and verify, not enrol" in refused.json()["error"]
        before = _gallery_state(root)
        bad = http.post(f"/v1/identities/{dave}", auth=enroller,
                        json={"photos": [*photos["photos"], {"name": "x.jpg", "data": "bm90IGEgcGhvdG8="}]})
        assert bad.status_code == 400 and bad.json()["error"].startswith("x.jpg: bad_image")
        assert http.delete("/v1/identities/nobody", auth=enroller).status_code == 404
        assert _gallery_state(root) == before

        enrolled = http.post(f"/v1/identities/{dave}", json=photos, auth=enroller)
        assert enrolled.status_code == 200 and enrolled.json()["enrolled"] == 2, enrolled.text
        erin = sorted(people)[7]  # a second person: identify's lead of the best match over the next one
        second = {"photos": [{"name": p.name, "data": base64.b64encode(p.read_bytes()).decode()}
                             for p in people[erin][:1]]}
        assert http.post(f"/v1/identities/{erin}", json=second, auth=enroller).status_code == 200
        before = scrape(f"{base}/metrics")  # open: a Prometheus scraper carries no account
        answer = http.post("/v1/identify?top_k=1", content=people[dave][0].read_bytes(), auth=reader).json()
        assert answer["identity"] == dave and answer["probe_version"] == answer["template_version"]
        assert len(answer["matches"]) == 1
        others = [http.post("/v1/identify", content=people[p][0].read_bytes(), auth=reader).json()
                  for p in sorted(people)[4:7]]
        same = http.post(f"/v1/verify/{dave}", content=people[dave][1].read_bytes(), auth=reader).json()
        assert same["same"] is True and same["threshold"] == 0.5
        assert http.post("/v1/identify", content=b"not a photo", auth=reader).status_code == 400
        _assert_service_metrics(before, scrape(f"{base}/metrics"), [answer, *others], same)
        assert dave in [i["identity"] for i in http.get("/v1/identities", auth=reader).json()]
        assert http.delete(f"/v1/identities/{dave}", auth=reader).status_code == 403
        assert http.delete(f"/v1/identities/{dave}", auth=enroller).json()["faces_removed"] == 2
        assert http.delete(f"/v1/identities/{erin}", auth=enroller).json()["faces_removed"] == 1


def _assert_service_metrics(before: Series, after: Series, identified: list[dict[str, Any]],
                            verified: dict[str, Any]) -> None:
    """[P] The service's /metrics counted exactly what it answered: decisions at the served threshold, the
    scores behind them, and every request by endpoint and status code."""
    v = {"version": identified[0]["probe_version"]["version"]}
    known = sum(a["identity"] is not None for a in identified)
    assert delta(before, after, "faceforge_identify_total", **v, decision="known") == known >= 1
    assert delta(before, after, "faceforge_identify_total", **v, decision="unknown") == len(identified) - known
    assert delta(before, after, "faceforge_identify_top1_score_count", **v) == len(identified)
    # the top-1 lead is measured even where the caller asked for one match (a second is searched for it)
    assert delta(before, after, "faceforge_identify_top1_score_sum", **v) == pytest.approx(
        sum(a["matches"][0]["score"] for a in identified), abs=1e-5)
    assert delta(before, after, "faceforge_identify_top2_gap_count", **v) == len(identified)
    assert delta(before, after, "faceforge_verify_total", **v, decision="accept") == 1
    assert delta(before, after, "faceforge_verify_score_sum", **v) == pytest.approx(verified["score"], abs=1e-6)
    assert after[("faceforge_served_threshold", frozenset(v.items()))] == 0.5
    assert delta(before, after, "faceforge_gallery_requests_total", endpoint="/v1/identify", code="200") == 4
    assert delta(before, after, "faceforge_gallery_requests_total", endpoint="/v1/identify", code="400") == 1
    assert delta(before, after, "faceforge_gallery_requests_total", endpoint="/v1/verify/{identity}",
                 code="200") == 1


def test_a_swap_re_embeds_first_and_identify_answers_throughout(workspace: dict[str, Any]) -> None:
    """Approve version 2: the promotion re-embeds every face, publishes, switches; identify requests sent
    all along succeed, each answered by one version with templates of that same version."""
    ws, params = workspace, workspace["params"]
    people = _people(ws)
    alice, carol = sorted(people)[0], sorted(people)[2]
    if not Gallery("sqlite:///gallery/gallery.db", "gallery/crops").list():
        assert _cli(ws, "enrol", alice, *map(str, people[alice][:3])).exit_code == 0
    client = FaceClient(ws["server"].grpc_url)
    gallery = Gallery("sqlite:///gallery/gallery.db", "gallery/crops")
    answers: list[dict[str, Any]] = []
    failures: list[str] = []
    stop = threading.Event()

    def ask() -> None:
        while not stop.is_set():
            try:
                answers.append(gallery.identify("probe", people[alice][0].read_bytes(), client, 1, 0.5))
            except Exception as exc:  # noqa: BLE001 - every failure is the finding
                failures.append(f"{type(exc).__name__}: {exc}")
            time.sleep(0.1)  # a steady client, not a load test: the other test worker shares the two cores

    asking = threading.Thread(target=ask)
    asking.start()
    try:
        time.sleep(1)
        _approve(ws["versions"][1])
        result = serve_champion(params, [str(ws["serving"])])
        assert result["gallery"]["re_embedded"] == 3 and result["gallery"]["active"]["version"] == ws["versions"][1]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not answers or answers[-1]["probe_version"]["version"]
                                                != ws["versions"][1]):
            time.sleep(0.5)
        time.sleep(1)
    finally:
        stop.set()
        asking.join()
    assert not failures, failures[:3]
    seen = [a["probe_version"]["version"] for a in answers]
    assert seen[0] == ws["versions"][0] and seen[-1] == ws["versions"][1], seen
    assert all(a["probe_version"] == a["template_version"] and a["identity"] == alice for a in answers)
    kept = {v["model_version"]: (v["state"], v["active"]) for v in gallery.versions()}
    assert kept == {ws["versions"][0]: ("ready", False), ws["versions"][1]: ("ready", True)}

    # enrolled after the swap: version 2 only; a rollback re-embeds it for version 1 before serving version 1
    assert _cli(ws, "enrol", carol, str(people[carol][0])).exit_code == 0
    back = rollback_serving(params, repository=str(ws["serving"]))
    assert back["gallery"]["re_embedded"] == 1 and back["gallery"]["active"]["version"] == ws["versions"][0]
    client = FaceClient(ws["server"].grpc_url)
    answer = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        answer = gallery.identify("probe", people[carol][0].read_bytes(), client, 1, 0.5)
        if answer["probe_version"]["version"] == ws["versions"][0]:
            break
        time.sleep(0.5)
    assert answer is not None and answer["probe_version"]["version"] == ws["versions"][0]
    assert answer["identity"] == carol

    # a promotion that died after the switch, before the gallery enrolled with the new version: the next run
    # (the watcher's next poll) finishes it, with nothing to upload or re-embed
    gallery.activate(ModelId(sha256_file(ws["models"][1]), ws["versions"][1]))
    finished = serve_champion(params, [str(ws["serving"])])
    assert [r["action"] for r in finished["repositories"]] == ["already_served"]
    assert finished["gallery"]["re_embedded"] == 0 and finished["gallery"]["active"]["version"] == ws["versions"][0]
    assert serve_champion(params, [str(ws["serving"])]).get("gallery") is None  # and then nothing at all


def test_gallery_migrate_follows_the_version_a_repository_serves(workspace: dict[str, Any]) -> None:
    """The served model changed without a promotion (a repository served by hand): enrolment says so and
    names the command; `faceforge gallery migrate` re-embeds for the served version and enrols with it."""
    ws = workspace
    people = _people(ws)
    someone = sorted(people)[4]
    gallery = Gallery("sqlite:///gallery/gallery.db", "gallery/crops")
    served = gallery.active()
    assert served is not None
    other = next(m for m in ws["models"] if sha256_file(m) != served.sha256)
    gallery.activate(ModelId(sha256_file(other), ws["versions"][ws["models"].index(other)]))
    refused = _cli(ws, "enrol", someone, str(people[someone][0]))
    assert refused.exit_code == 1 and "faceforge gallery migrate" in refused.output, refused.output
    done = _cli(ws, "migrate", "--serving-repository", str(ws["serving"]), "--json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["active"] == served.json()
    assert _cli(ws, "enrol", someone, str(people[someone][0])).exit_code == 0


MIGRATE = """
import os, signal, sys
from components.gallery.gallery import Gallery, ModelId
from components.gallery.reembed import CropEmbedder

database, crops, model, sha, crash_at = sys.argv[1:6]
embed, calls = CropEmbedder(model), []

def embedding(batch):
    calls.append(1)
    if len(calls) == int(crash_at):
        os.kill(os.getpid(), signal.SIGKILL)  # the worker dies mid-migration: no cleanup of any kind
    return embed(batch)

print(Gallery(database, crops).migrate(ModelId(sha, "7"), embedding, batch=2))
"""


def _migrate(database: str, crops: Path, model: Path, crash_at: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", MIGRATE, database, str(crops), str(model), sha256_file(model),
                           str(crash_at)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).parents[1])


def _migration_killed_halfway(database: str, crops: Path, ws: dict[str, Any]) -> None:
    """Seven faces enrolled; the migration to another model is killed in its third batch of two; enrol then
    waits for it; the rerun adds exactly the rest, and every template is the one its crop embeds to."""
    people = _people(ws)
    gallery = Gallery(database, str(crops))
    client = FaceClient(ws["server"].grpc_url)
    for person in sorted(people)[3:5]:
        gallery.enrol(person, [(str(p), p.read_bytes()) for p in people[person][:3]], client)
    lone = people[sorted(people)[5]][0]
    gallery.enrol(sorted(people)[5], [(str(lone), lone.read_bytes())], client)
    model = ws["models"][0]  # any ONNX file other than the one the faces were enrolled with
    served = gallery.active()
    target = ModelId(sha256_file(model), "7")
    if served is not None and served.sha256 == target.sha256:
        model = ws["models"][1]
        target = ModelId(sha256_file(model), "7")

    killed = _migrate(database, crops, model, crash_at=3)
    assert killed.returncode == -9, killed.stderr[-2000:]
    state = {v["model_sha256"]: (v["state"], v["templates"]) for v in gallery.versions()}
    assert state[target.sha256] == ("building", 4)  # two committed batches, the third lost whole
    with pytest.raises(GalleryError, match="re-embedding its faces for version 7"):
        late = people[sorted(people)[6]][0]
        gallery.enrol("late", [(str(late), late.read_bytes())], client)

    finished = _migrate(database, crops, model, crash_at=0)
    assert finished.returncode == 0 and "'re_embedded': 3" in finished.stdout, finished.stderr[-2000:]
    with gallery.engine.connect() as connection:
        rows = connection.execute(select(templates).where(templates.c.model_sha256 == target.sha256)).all()
        crop_of = dict(connection.execute(select(faces.c.id, faces.c.crop_sha256)).all())
    assert sorted(r.face_id for r in rows) == sorted(crop_of)  # every face once, none twice
    embed = CropEmbedder(model)
    for row in rows:
        np.testing.assert_allclose(np.frombuffer(row.embedding, np.float32),
                                   embed(gallery.crops.get(crop_of[row.face_id])[None])[0], atol=1e-6)
    assert {v["model_sha256"]: v["state"] for v in gallery.versions()}[target.sha256] == "ready"


def test_a_migration_killed_halfway_finishes_on_a_rerun_sqlite(workspace: dict[str, Any], tmp_path: Path) -> None:
    _migration_killed_halfway(f"sqlite:///{tmp_path / 'gallery.db'}", tmp_path / "crops", workspace)


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Debian's PostgreSQL on 127.0.0.1 with a password, as a team runs it."""
    from tests.servers import postgres_bin, postgres_server

    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed here (apt-get install postgresql; .ci/run installs it)")
    server, url = postgres_server(free_port(), "gallery-secret", tmp_path_factory.mktemp("postgres-logs"))
    with server:
        yield url


def test_the_same_gallery_in_postgresql(workspace: dict[str, Any], postgres: str, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The team's database: the migration crash and rerun, then the CLI enrols and identifies through it with
    the URL (password included) given the way a team gives it, in FACEFORGE_GALLERY_DATABASE."""
    _migration_killed_halfway(postgres, tmp_path / "crops", workspace)
    gallery = Gallery(postgres, str(tmp_path / "crops"))
    assert len(gallery.list()) == 3
    # a person forgotten ([Q]): their rows go, and the tables are rewritten, so no dead row of theirs stays in
    # the old pages (PostgreSQL keeps those until VACUUM FULL)
    from components.gallery.database import faces, scrub

    def filenode() -> int:
        with gallery.engine.connect() as connection:
            return connection.exec_driver_sql(f"SELECT pg_relation_filenode('{faces.name}')").scalar()

    before = filenode()
    gallery.remove(sorted(f["identity"] for f in gallery.list())[0])
    scrub(gallery.engine)
    assert filenode() != before and len(gallery.list()) == 2

    monkeypatch.setenv("FACEFORGE_GALLERY_DATABASE", postgres.replace("/gallery", "/postgres"))
    monkeypatch.setenv("FACEFORGE_GALLERY_CROPS", str(tmp_path / "team-crops"))
    people = _people(workspace)
    person = sorted(people)[7]
    assert _cli(workspace, "enrol", person, str(people[person][0])).exit_code == 0
    answer = json.loads(_cli(workspace, "identify", str(people[person][0]), "--json").output)
    assert answer["identity"] == person and answer["probe_version"] == answer["template_version"]
    assert os.listdir(tmp_path / "team-crops" / "crops")
    monkeypatch.setenv("FACEFORGE_GALLERY_DATABASE", postgres.replace("gallery-secret", "wrong"))
    refused = _cli(workspace, "list")
    assert refused.exit_code != 0 and "gallery-secret" not in refused.output and "***" in refused.output, \
        refused.output


def test_search_is_exact_and_the_index_of_a_large_gallery_agrees(tmp_path: Path) -> None:
    """The exact search returns the true top identities (best template per identity, against brute force);
    a gallery past ``index_from`` loads into the IVF-SQ8 index chunk by chunk, which finds the same top-1."""
    from bench.gallery_identify import synthetic_templates, write_gallery
    from components.gallery.search import IndexedTemplates, Templates

    matrix, owner, probes, _ = synthetic_templates(4000, dim=64, seed=1)
    names = [f"person{i:07d}" for i in owner]
    exact = Templates.build([row.tobytes() for row in matrix], names, 64)
    for probe in probes[::10]:
        best = np.full(owner.max() + 1, -np.inf)
        np.maximum.at(best, owner, matrix @ probe)
        expected = [(f"person{i:07d}", best[i]) for i in np.argsort(-best)[:3]]
        found = exact.top(probe, 3)
        assert [i for i, _ in found] == [i for i, _ in expected]
        np.testing.assert_allclose([s for _, s in found], [s for _, s in expected], atol=1e-5)

    np.save(tmp_path / "templates.npy", matrix)
    np.save(tmp_path / "owner.npy", owner)
    write_gallery(tmp_path, "a" * 64)
    gallery = Gallery(f"sqlite:///{tmp_path / 'gallery.db'}", str(tmp_path / "crops"), index_from=1000)
    _, indexed = gallery.templates_of(ModelId("a" * 64, "1"))
    assert isinstance(indexed, IndexedTemplates) and len(indexed) == 4000
    agree = [indexed.top(p, 1)[0][0] == exact.top(p, 1)[0][0] for p in probes[:400]]  # enrolled people's
    assert np.mean(agree) >= 0.99
    for probe in probes[:20]:
        identity, score = exact.top(probe, 1)[0]
        assert abs(indexed.best_of(identity, probe) - score) < 0.02


def test_compatibility_with_the_champion_is_measured_for_every_candidate(workspace: dict[str, Any],
                                                                         eval_sets: Path) -> None:
    """The record step's measurement: the champion's own file is compatible with itself; an independently
    trained model is not ("re-embedding required", with the figures); both reach the tags and the model card."""
    from flows.compatibility import compatibility_markdown, compatibility_tags, measure

    ws = workspace
    champion = ws["versions"][0]
    base = ["publish.backend=python", f"eval.ijbc_root={eval_sets / 'ijbc_mini'}", "eval.ijbc_hard_root=null"]
    client = mlflow.MlflowClient()
    same = measure(load_params(ws["root"] / "params.yaml", [*base, f"publish.model={ws['models'][0]}"]), client,
                   champion)
    assert same["compatible"] is True and same["verdict"] == f"compatible with v{champion}", same
    assert same["sets"]["ijbc"]["new_old"] == same["sets"]["ijbc"]["old_old"]
    other = measure(load_params(ws["root"] / "params.yaml", [*base, f"publish.model={ws['models'][1]}"]), client,
                    champion)
    assert other["compatible"] is False and other["verdict"] == "re-embedding required", other
    assert other["reasons"] and other["with_sha256"] == sha256_file(ws["models"][0])
    assert json.loads((ws["root"] / "reports" / "compatibility.json").read_text()) == other
    tags = compatibility_tags(other, 5000)
    assert tags["compatibility.with"] == champion and tags["compatibility.verdict"] == "re-embedding required"
    far = other["sets"]["ijbc"]["bct_far"]
    key = f"compatibility.ijbc.new_old.tar_at_far_{far:.0e}".replace("e-0", "e-")
    assert float(tags[key]) < float(tags[key.replace("new_old", "old_old")])
    card = "\n".join(compatibility_markdown(other))
    assert "**re-embedding required**" in card and "| ijbc | new probe, old template |" in card
    assert measure(ws["params"], client, None)["verdict"] == "no champion yet: nothing to be compatible with"


def test_a_version_measured_compatible_is_served_first_where_the_team_accepts_it(
        workspace: dict[str, Any], eval_sets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """gallery.accept_compatible: a version measured compatible with the model the gallery enrols with is served
    at once and its probes search the old templates (each answer names both versions) until their own are
    re-embedded after the switch; a promotion that died before that finishes on the next run. Without the
    team's consent the same probe is refused, saying what was measured."""
    import onnx

    from flows.compatibility import measure

    ws = workspace
    people = _people(ws)
    alice = sorted(people)[0]
    strict = Gallery("sqlite:///gallery/gallery.db", "gallery/crops")
    if not strict.list():
        assert _cli(ws, "enrol", alice, *map(str, people[alice][:3])).exit_code == 0
    enrolled = next(i["identity"] for i in strict.list())
    active = strict.active()
    assert active is not None
    # the next version: the enrolling model's very weights under another file (another SHA-256), so its probes
    # really are compatible with those templates; the retrain flow's measurement says so on its tags
    graph = onnx.load(str(ws["models"][[sha256_file(m) for m in ws["models"]].index(active.sha256)]))
    graph.doc_string = "version 3"
    onnx.save(graph, str(ws["root"] / "c.onnx"))
    overrides = ["publish.backend=python", f"eval.ijbc_root={eval_sets / 'ijbc_mini'}", "eval.ijbc_hard_root=null"]
    measured = measure(load_params(ws["root"] / "params.yaml", [*overrides, f"publish.model={ws['root'] / 'c.onnx'}"]),
                       mlflow.MlflowClient(), active.version)
    assert measured["verdict"] == f"compatible with v{active.version}", measured
    third = ModelId(sha256_file(ws["root"] / "c.onnx"), _register(ws["params"], ws["root"] / "c.onnx", measured))
    _approve(third.version)
    params = load_params(ws["root"] / "params.yaml", ["publish.backend=python", "gallery.accept_compatible=true"])

    def died(*_: Any) -> None:
        raise RuntimeError("the watcher died while re-embedding")

    with monkeypatch.context() as mp:
        mp.setattr("flows.promotion.prepare", died)
        with pytest.raises(RuntimeError, match="re-embedding"):
            serve_champion(params, [str(ws["serving"])])  # served first: the repository switched already
    accepting = Gallery("sqlite:///gallery/gallery.db", "gallery/crops", accept_compatible=True)
    client = FaceClient(ws["server"].grpc_url)
    probe = people[enrolled][0].read_bytes()
    answer = wait_for(lambda: (a := accepting.identify("probe", probe, client, 1, 0.5))["probe_version"]
                      == third.json() and a, 60, "the served model answering with version 3")
    assert answer["template_version"] == active.json() and answer["identity"] == enrolled
    with pytest.raises(GalleryError, match=rf"measured compatible with {re.escape(active.label)}.*accept_compatible"):
        strict.identify("probe", probe, client, 1, 0.5)

    finished = serve_champion(params, [str(ws["serving"])])  # the watcher's next poll
    assert finished["gallery"]["re_embedded"] > 0 and finished["gallery"]["active"] == third.json(), finished
    own = accepting.identify("probe", probe, client, 1, 0.5)
    assert own["probe_version"] == own["template_version"] == third.json() and own["identity"] == enrolled

