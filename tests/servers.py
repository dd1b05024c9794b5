"""The team's servers as real processes on 127.0.0.1, for the end-to-end test and bench/approval_latency.py.

The same commands infra/compose.yaml runs (``prefect server start``, ``prefect worker start``, ``mlflow server``),
with SQLite for their databases and moto's S3 server for MinIO. Each server runs in its own process group and is
stopped by its own process id (flows/server_process.py), never by name.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from components import env_defaults
from flows.server_process import ServerProcess, answers

BIN = Path(sys.executable).parent


def server_env(**extra: str) -> dict[str, str]:
    """The environment for a server or command a test starts: the user's, plus what the test configures.

    Without the defaults that importing the product set in this process (components/env_defaults.py):
    each child must set them itself, as it does for a user, or a missing default would pass unseen."""
    user = {k: v for k, v in os.environ.items() if k not in env_defaults.applied}
    return dict(user, **extra)


@dataclass(frozen=True)
class TeamSecrets:
    """Team mode's credentials for one test: MLflow's admin and the three accounts, Prefect's auth string."""

    admin: str
    approver: str
    retrain: str
    watcher: str
    prefect_auth_string: str

    @classmethod
    def generate(cls) -> TeamSecrets:
        return cls(*(f"pw-{secrets.token_hex(12)}" for _ in range(4)), f"faceforge:{secrets.token_hex(12)}")

    def all(self) -> list[str]:
        return [self.admin, self.approver, self.retrain, self.watcher, self.prefect_auth_string.split(":", 1)[1]]

    def role_passwords(self) -> dict[str, str]:
        """What a worker holds (each flow run signs in as its own account, flows/accounts.py)."""
        return {"FACEFORGE_MLFLOW_RETRAIN_PASSWORD": self.retrain, "FACEFORGE_MLFLOW_WATCHER_PASSWORD": self.watcher}

    def as_admin(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": self.admin}

    def prefect_auth(self) -> tuple[str, str]:
        user, password = self.prefect_auth_string.split(":", 1)
        return user, password


def mlflow_server(backend_uri: str, artifacts: str, port: int, env: dict[str, str], logs: Path,
                  team: TeamSecrets | None = None) -> ServerProcess:
    """``mlflow server`` with a database backend store and artifacts proxied to S3 (``--artifacts-destination``);
    with ``team``, its basic-auth app (users in SQLite next to the logs, ``admin`` created on first start).

    Its GenAI job runner (seven huey consumer processes, ~250 MB each) is off, as in infra/compose.yaml:
    faceforge submits no MLflow jobs."""
    env = dict(env, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", backend_uri, "--artifacts-destination", artifacts]
    if team is not None:
        ini = logs / "basic_auth.ini"
        ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{logs / 'mlflow-auth.db'}\n"
                       "admin_username = admin\n")
        env |= {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": team.admin,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16)}
        command += ["--app-name", "basic-auth"]
    return ServerProcess("mlflow server", command, env, logs / "mlflow-server.log",
                         answers(f"http://127.0.0.1:{port}/health"))


def prefect_worker(pool: str, api_url: str, env: dict[str, str], logs: Path, cwd: Path) -> ServerProcess:
    """``prefect worker start`` on a process pool; ready once the server lists it among the pool's workers."""
    auth_string = env.get("PREFECT_API_AUTH_STRING")
    auth = tuple(auth_string.split(":", 1)) if auth_string else None

    def registered() -> bool:
        try:
            reply = httpx.post(f"{api_url}/work_pools/{pool}/workers/filter", json={}, timeout=5, auth=auth)
            return reply.status_code == 200 and bool(reply.json())
        except httpx.HTTPError:
            return False

    return ServerProcess("prefect worker", [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type",
                                            "process"], env, logs / "prefect-worker.log", registered, cwd=cwd)


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, every_s: float = 1.0) -> Any:
    """Poll until ``condition()`` returns something truthy; its value, or TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"{what}: not within {timeout_s:.0f} s")


def serve_flows(workspace: Path, tracking_uri: str, serving: Path) -> ServerProcess:
    """``faceforge serve-flows`` on one machine (its own local Prefect server), serving approved models to the
    ``serving`` folder with the python backend the bundled Triton loads."""
    from components.serving.triton_server import free_port

    env = server_env(MLFLOW_TRACKING_URI=tracking_uri, FACEFORGE_SERVING_REPOSITORY=str(serving),
                    PREFECT_HOME=str(workspace / "prefect-home"))
    env.pop("PREFECT_API_URL", None)
    return ServeFlows("faceforge serve-flows", [str(BIN / "faceforge"), "serve-flows", "--backend", "python",
                                                "--params", "params.yaml", "--port", str(free_port())],
                      env, workspace / "serve-flows.log", lambda: True, cwd=workspace)


class ServeFlows(ServerProcess):
    """``faceforge serve-flows``, stopped as systemd or Docker stop a service: SIGTERM to its own pid alone.

    The Prefect server it started (a session of its own) must stop with it; if it is still there 30 s
    later, it is stopped here by the pid serve-flows printed, and ``server_outlived`` says so."""

    server_outlived = False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        super().stop()  # whatever is left in its group
        announced = re.search(r"Prefect server \(pid (\d+)\)", self.tail(1_000_000))
        if announced is None:
            return
        pid = int(announced.group(1))
        if _exits(pid, 30):
            return
        self.server_outlived = True
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                return
            if _exits(pid, 30):
                return


def _exits(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.5)
    return False


def ray_node(name: str, command: list[str], env: dict[str, str], logs: Path, ready: Callable[[], Any],
             cpus: int = 1) -> ServerProcess:
    """One raylet of a loopback cluster (``ray start --block``), stopped by its own process id, not ``ray stop``."""
    return ServerProcess(name, [str(BIN / "ray"), "start", "--block", f"--num-cpus={cpus}",
                                "--node-ip-address=127.0.0.1", "--disable-usage-stats", *command],
                         env, logs / f"{name}.log", ready)


def alive_ray_nodes(address: str, env: dict[str, str]) -> int:
    probe = (f"import ray; ray.init(address='{address}', logging_level='ERROR'); "
             "print('alive nodes:', sum(n['Alive'] for n in ray.nodes()))")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    # Ray may print its own lines too (a lagging-heartbeat warning on a busy machine): read the marked one
    counts = re.findall(r"^alive nodes: (\d+)$", done.stdout, re.MULTILINE) if done.returncode == 0 else []
    return int(counts[-1]) if counts else 0


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL server programs (``apt-get install postgresql``; .ci/run installs it), if installed."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parents[1].name))
    return found[-1].parent if found else None


def postgres_server(port: int, password: str, logs: Path) -> tuple[ServerProcess, str]:
    """A throw-away PostgreSQL cluster on 127.0.0.1 with password authentication (as a team's): returns the
    server and the SQLAlchemy URL of its ``gallery`` database. PostgreSQL refuses to run as root, so under
    root its files belong to the ``postgres`` account and the programs run as it (``setpriv``, which execs: the
    process started is the server itself, stopped by its own process id)."""
    import tempfile

    import psycopg

    binaries = postgres_bin()
    assert binaries is not None, "PostgreSQL is not installed (apt-get install postgresql)"
    home = Path(tempfile.mkdtemp(prefix="faceforge-postgres-"))  # outside pytest's root-only tmp folders
    (home / "password").write_text(password)
    as_owner: list[str] = []
    if os.geteuid() == 0:
        import pwd

        owner = pwd.getpwnam("postgres")
        for path in (home, home / "password"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
        as_owner = ["setpriv", f"--reuid={owner.pw_uid}", f"--regid={owner.pw_gid}", "--init-groups"]
    subprocess.run([*as_owner, str(binaries / "initdb"), "-D", str(home / "data"), "-U", "faceforge",
                    "--auth=scram-sha-256", f"--pwfile={home / 'password'}", "--no-sync"],
                   check=True, capture_output=True)
    url = f"postgresql+psycopg://faceforge:{password}@127.0.0.1:{port}"

    def ready() -> bool:
        try:
            with psycopg.connect(f"host=127.0.0.1 port={port} user=faceforge password={password} "
                                 "dbname=postgres", autocommit=True, connect_timeout=2) as connection:
                if connection.execute("SELECT 1 FROM pg_database WHERE datname = 'gallery'").fetchone() is None:
                    connection.execute("CREATE DATABASE gallery")
            return True
        except psycopg.OperationalError:
            return False

    server = PostgresProcess("postgres", [*as_owner, str(binaries / "postgres"), "-D", str(home / "data"),
                                          "-p", str(port), "-h", "127.0.0.1", "-k", str(home), "-c", "fsync=off"],
                             server_env(), logs / "postgres.log", ready)
    server.home = home
    return server, f"{url}/gallery"


class PostgresProcess(ServerProcess):
    """Stopped by PostgreSQL's "fast shutdown" (SIGINT to the postmaster: open sessions are ended), not the
    "smart" one SIGTERM asks for, which waits for every pooled client connection to close; its files go too."""

    home: Path | None = None

    def stop(self) -> None:
        import shutil

        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        super().stop()
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)


def prometheus_server(port: int, targets: dict[str, str], logs: Path) -> ServerProcess:
    """Debian's Prometheus (``apt-get install prometheus``; .ci/run installs it) on 127.0.0.1 with the project's
    own config for one machine (infra/prometheus/local.yml) and its alert rules, the scrape targets replaced by
    ``{job: "127.0.0.1:port"}`` and scraping every second, so a test sees its requests counted at once."""
    import shutil
    import tempfile

    import yaml

    infra = Path(__file__).parents[1] / "infra" / "prometheus"
    home = Path(tempfile.mkdtemp(prefix="faceforge-prometheus-", dir=logs))
    shutil.copy(infra / "alerts.yml", home / "alerts.yml")
    config = yaml.safe_load((infra / "local.yml").read_text())
    config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{port}"
    return ServerProcess("prometheus", [shutil.which("prometheus") or "prometheus",
                                        f"--config.file={home / 'prometheus.yml'}", f"--storage.tsdb.path={home}/data",
                                        f"--web.listen-address=127.0.0.1:{port}"],
                         server_env(), logs / "prometheus.log", answers(f"{url}/-/ready"))
