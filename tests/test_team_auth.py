"""[N] Team mode with authentication, on real servers on 127.0.0.1: ``mlflow server --app-name basic-auth``
with the accounts ``faceforge accounts`` provisions (approver, retrain, watcher) and a plain reader, and a
Prefect server with an API auth string. Each account does what it is for and no more; the credentials appear
in no MLflow param or tag, Prefect log or artifact, lineage output or served file."""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from components.serving.triton_server import free_port
from flows.server_process import prefect_server
from tests.servers import TeamSecrets, mlflow_server, server_env

BIN = Path(sys.executable).parent
REPO = Path(__file__).parents[1]
NAME = "faceforge-embedder"


@pytest.fixture(scope="module")
def team(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("team")
    accounts = TeamSecrets.generate()
    passwords = {"admin": accounts.admin, "approver": accounts.approver, "retrain": accounts.retrain,
                 "watcher": accounts.watcher, "reader": f"pw-{secrets.token_hex(12)}"}
    mlflow_port, prefect_port = free_port(), free_port()
    server = mlflow_server(f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"), mlflow_port, server_env(),
                           root, accounts)
    prefect = prefect_server(root / "prefect-home", prefect_port, root, auth_string=accounts.prefect_auth_string)
    project = root / "project"
    project.mkdir()
    (project / "params.yaml").write_text((REPO / "params.yaml").read_text())
    with server, prefect:
        yield {"project": project, "uri": f"http://127.0.0.1:{mlflow_port}", "passwords": passwords,
               "auth_string": accounts.prefect_auth_string, "prefect_api": f"http://127.0.0.1:{prefect_port}/api"}


def _as(team: dict[str, Any], account: str, **extra: str) -> dict[str, str]:
    """The environment of a process that runs as ``account`` (faceforge-<role> for the provisioned ones)."""
    username = account if account in ("admin", "reader") else f"faceforge-{account}"
    # the registry too: an earlier test's mlflow.set_registry_uri leaves MLFLOW_REGISTRY_URI in os.environ
    return server_env(**{"MLFLOW_TRACKING_URI": team["uri"], "MLFLOW_REGISTRY_URI": team["uri"],
                         "MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": team["passwords"][account],
                         **extra})


def _faceforge(team: dict[str, Any], env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "faceforge"), *args], cwd=team["project"], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_accounts_do_what_they_are_for_and_credentials_never_leak(team: dict[str, Any], tmp_path: Path) -> None:
    from tests.test_approval import _onnx

    pw = team["passwords"]
    role_env = {f"FACEFORGE_MLFLOW_{r.upper()}_PASSWORD": pw[r] for r in ("approver", "retrain")}
    (tmp_path / "watcher.secret").write_text(pw["watcher"] + "\n")  # a secret file, as Docker mounts one
    role_env["FACEFORGE_MLFLOW_WATCHER_PASSWORD_FILE"] = str(tmp_path / "watcher.secret")
    provisioned = _faceforge(team, _as(team, "admin", **role_env), "accounts")
    assert provisioned.returncode == 0, provisioned.stderr
    grants = json.loads(provisioned.stdout)["accounts"]
    assert grants["faceforge-approver"]["registered_model"] == "MANAGE"
    assert grants["faceforge-watcher"] == {"role": "watcher", "experiment": "READ", "registered_model": "EDIT"}
    reader = httpx.post(f"{team['uri']}/api/2.0/mlflow/users/create", auth=("admin", pw["admin"]),
                        json={"username": "reader", "password": pw["reader"]}, timeout=30)
    assert reader.status_code == 200, reader.text

    # retrain's account: a run with params and metrics, a registered version with its verdict and `challenger`
    onnx = _onnx(tmp_path / "a.onnx", 1.0)
    register = ("import mlflow, sys; from pathlib import Path; from components.io.checksums import sha256_file; "
                "from components.serving.lineage import Lineage; from flows.record import register_model; "
                "from pipelines.params import load_params; p = load_params(Path('params.yaml')); "
                "mlflow.set_experiment(p.mlflow.experiment); "
                f"m = Path({str(onnx)!r}); "
                "l = Lineage(model_sha256=sha256_file(m), git_revision='abc', dvc_data_hash='d41d8', "
                "metrics={'ijbc.tar_at_far_1e-4': 0.5}, params={'train.lr': 0.1}); "
                "r = mlflow.start_run(); mlflow.log_param('train.lr', 0.1); "
                "v = register_model(p, m, l, {'status': 'pass', 'passed': True, 'reasons': []}); mlflow.end_run(); "
                "print('registered version', v)")
    done = subprocess.run([sys.executable, "-c", register], cwd=team["project"], env=_as(team, "retrain"),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    version = re.findall(r"^registered version (\d+)$", done.stdout, re.MULTILINE)[-1]

    def move_champion(account: str) -> httpx.Response:
        user = "reader" if account == "reader" else f"faceforge-{account}"
        return httpx.post(f"{team['uri']}/api/2.0/mlflow/registered-models/alias", auth=(user, pw[account]),
                          json={"name": NAME, "alias": "champion", "version": version}, timeout=30)

    assert move_champion("reader").status_code == 403  # sees the model, may not approve it
    assert httpx.post(f"{team['uri']}/api/2.0/mlflow/registered-models/alias", timeout=30,
                      json={"name": NAME, "alias": "champion", "version": version}).status_code == 401
    approved = move_champion("approver")
    assert approved.status_code == 200, approved.text

    # the watcher's account serves it, as the promote flow reporting to the Prefect server with its auth string
    serving = tmp_path / "serving"
    prefect_env = {"PREFECT_API_URL": team["prefect_api"], "PREFECT_API_AUTH_STRING": team["auth_string"],
                   "FACEFORGE_SERVING_REPOSITORY": str(serving), "PREFECT_HOME": str(tmp_path / "client-home")}
    wrong = _faceforge(team, _as(team, "watcher", **prefect_env | {"PREFECT_API_AUTH_STRING": "faceforge:no"}),
                       "promote", "--backend", "python")
    assert wrong.returncode == 1 and "refused the credentials" in wrong.stderr, wrong.stderr
    assert "PREFECT_API_AUTH_STRING" in wrong.stderr and "faceforge:no" not in wrong.stderr
    # as a worker runs it: no MLFLOW_TRACKING_* of its own, the watcher's password from a secret file
    worker_env = {k: v for k, v in _as(team, "reader", **prefect_env).items()
                  if k not in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")}
    worker_env["FACEFORGE_MLFLOW_WATCHER_PASSWORD_FILE"] = str(tmp_path / "watcher.secret")
    promoted = _faceforge(team, worker_env, "promote", "--backend", "python")
    assert promoted.returncode == 0, promoted.stderr
    assert (serving / NAME / "1" / "model.onnx").is_file()
    wrong_mlflow = _faceforge(team, _as(team, "watcher", MLFLOW_TRACKING_PASSWORD="nope"), "lineage", "champion")
    assert wrong_mlflow.returncode != 0 and "refused the credentials" in wrong_mlflow.stderr, wrong_mlflow.stderr
    unauthenticated = httpx.post(f"{team['prefect_api']}/flow_runs/filter", json={}, timeout=30)
    assert unauthenticated.status_code == 401

    # Nowhere a person or a process can read: MLflow params and tags, Prefect logs and artifacts, lineage, files
    lineage = _faceforge(team, _as(team, "reader"), "lineage", "champion", "--json")
    assert lineage.returncode == 0, lineage.stderr
    basic = tuple(team["auth_string"].split(":", 1))
    prefect_logs = httpx.post(f"{team['prefect_api']}/logs/filter", json={}, auth=basic, timeout=30).text
    artifacts = httpx.post(f"{team['prefect_api']}/artifacts/filter", json={}, auth=basic, timeout=30).text
    flow_runs = httpx.post(f"{team['prefect_api']}/flow_runs/filter", json={}, auth=basic, timeout=30).json()
    assert [r["state"]["type"] for r in flow_runs] == ["COMPLETED"]
    admin = ("admin", pw["admin"])
    model_version = httpx.get(f"{team['uri']}/api/2.0/mlflow/model-versions/get", auth=admin, timeout=30,
                              params={"name": NAME, "version": version}).json()["model_version"]
    run = httpx.get(f"{team['uri']}/api/2.0/mlflow/runs/get", auth=admin, timeout=30,
                    params={"run_id": model_version["run_id"]}).json()["run"]
    served_files = "".join(p.read_text(errors="replace") for p in serving.rglob("*") if p.is_file()
                           and p.suffix in (".json", ".pbtxt", ".py"))
    seen = {"MLflow run": json.dumps(run), "MLflow version": json.dumps(model_version), "Prefect logs": prefect_logs,
            "Prefect artifacts": artifacts, "lineage": lineage.stdout + lineage.stderr,
            "promote output": promoted.stdout + promoted.stderr, "served files": served_files}
    assert "serving.last" in seen["MLflow version"] and "faceforge-promote" in artifacts  # searched real records
    secrets_ = [*pw.values(), team["auth_string"].split(":", 1)[1]]
    leaks = {where: [s for s in secrets_ if s in text] for where, text in seen.items()}
    assert not any(leaks.values()), leaks
