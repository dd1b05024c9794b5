"""infra/: the compose deployment parses and is wired consistently (no Docker here to run it)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

INFRA = Path(__file__).parents[1] / "infra"


def _compose() -> dict:
    return yaml.safe_load((INFRA / "compose.yaml").read_text())


def _env_example() -> dict[str, str]:
    lines = [ln for ln in (INFRA / ".env.example").read_text().splitlines() if ln and not ln.startswith("#")]
    return dict(ln.split("=", 1) for ln in lines)


def test_services_and_every_variable_is_defined() -> None:
    compose = _compose()
    assert set(compose["services"]) == {"postgres", "minio", "buckets", "mlflow", "mlflow-accounts",
                                        "prefect-server", "prefect-deploy", "prefect-worker", "triton", "gallery",
                                        "prometheus"}
    text = (INFRA / "compose.yaml").read_text()
    used = set(re.findall(r"(?<!\$)\$\{([A-Z_]+)\}", text))
    assert used <= set(_env_example()), used - set(_env_example())
    assert _env_example()["BIND_ADDRESS"] == "127.0.0.1"  # nothing is exposed beyond the host by default


def test_ports_bind_to_the_configured_address_and_services_have_healthchecks() -> None:
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("${BIND_ADDRESS}:"), (name, port)
        if name not in ("buckets", "mlflow-accounts", "prefect-deploy", "prefect-worker"):  # one-shots, a client
            assert "healthcheck" in service, name


def test_wiring_mlflow_prefect_triton() -> None:
    services = _compose()["services"]
    mlflow = " ".join(services["mlflow"]["command"])
    assert "postgresql://" in mlflow and "--artifacts-destination s3://${MLFLOW_BUCKET}" in mlflow
    assert "--app-name basic-auth" in mlflow and "CREATE DATABASE mlflow_auth" in (
        INFRA / "postgres" / "init.sql").read_text()
    # team mode: the flows sign in with their own accounts, the Prefect API with its auth string
    assert services["prefect-server"]["environment"]["PREFECT_SERVER_API_AUTH_STRING"] == "${PREFECT_AUTH_STRING}"
    for client in ("prefect-deploy", "prefect-worker"):
        assert services[client]["environment"]["PREFECT_API_AUTH_STRING"] == "${PREFECT_AUTH_STRING}"
    assert services["mlflow-accounts"]["command"] == "faceforge accounts"
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    worker = services["prefect-worker"]["environment"]
    assert worker["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    triton = services["triton"]
    assert "s3://http://minio:9000/${MODELS_BUCKET}/triton" in triton["command"]
    assert "--model-control-mode=poll" in triton["command"]
    assert triton["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "uv sync --frozen" in (INFRA / "worker" / "Dockerfile").read_text()
    assert "CREATE DATABASE mlflow" in (INFRA / "postgres" / "init.sql").read_text()
    # the gallery: the same PostgreSQL and MinIO for the watcher (it re-embeds) and the service (it answers)
    assert "CREATE DATABASE gallery" in (INFRA / "postgres" / "init.sql").read_text()
    gallery = services["gallery"]
    assert gallery["command"].startswith("faceforge gallery --url triton:8001 serve")
    for key in ("FACEFORGE_GALLERY_DATABASE", "FACEFORGE_GALLERY_CROPS"):
        assert gallery["environment"][key] == worker[key]
    assert worker["FACEFORGE_GALLERY_DATABASE"].startswith("postgresql+psycopg://")
    # Prometheus scrapes the ports the two services publish, with the rules CI checks (tests/test_monitoring.py)
    scrape = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in scrape["scrape_configs"]}
    assert targets == {"triton": ["triton:8002"], "gallery": ["gallery:8010"]}
    assert "${BIND_ADDRESS}:8002:8002" in triton["ports"] and "--port 8010" in gallery["command"]
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    # what Triton captures, the worker's drift flow reads: one volume, one variable
    for service in (triton, services["prefect-worker"]):
        assert service["environment"]["FACEFORGE_CAPTURE"] == "/capture" and "capture:/capture" in service["volumes"]


def test_prefect_deployments_point_at_real_flows_on_the_workers_pool() -> None:
    import importlib

    from prefect.client.schemas.schedules import CronSchedule

    from pipelines.params import MonitoringParams, OrchestrationParams

    spec = yaml.safe_load((INFRA.parent / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"scheduled", "on-approval", "manual", "drift"}
    for deployment in deployments.values():
        path, name = deployment["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        assert getattr(module, name).name == {"retrain": "retrain", "promote": "promote",
                                              "rollback": "rollback", "drift": "drift"}[name]
        assert deployment["work_pool"]["name"] == _env_example()["PREFECT_WORK_POOL"]
    # The worker runs flows in its checkout: FACEFORGE_WORKSPACE, which the worker image sets to /app.
    pull = spec["pull"][0]["prefect.deployments.steps.set_working_directory"]["directory"]
    assert pull == "{{ $FACEFORGE_WORKSPACE }}"
    assert "FACEFORGE_WORKSPACE=/app" in (INFRA / "worker" / "Dockerfile").read_text()
    defaults = OrchestrationParams()
    cron = deployments["scheduled"]["schedules"][0]["cron"]
    assert cron == defaults.schedule_cron and CronSchedule(cron=cron).cron == cron
    watcher = deployments["on-approval"]
    assert watcher["parameters"] == {"watching": True}
    assert watcher["schedules"] == [{"interval": defaults.approval_poll_s}]
    services = _compose()["services"]
    worker = services["prefect-worker"]
    assert "--pool ${PREFECT_WORK_POOL}" in worker["command"]
    assert worker["environment"]["FACEFORGE_SERVING_REPOSITORY"].startswith("s3://")
    assert "prefect --no-prompt deploy --all" in services["prefect-deploy"]["command"]

    from flows.deploy import deployments as served  # `faceforge serve-flows`: the same three, one machine

    local = {d.name: d for d in served(cron, defaults.approval_poll_s, "/srv/faceforge")}
    assert set(local) == set(deployments) and local["scheduled"].parameters == {"workspace": "/srv/faceforge"}
    assert [s.schedule.cron for s in local["scheduled"].schedules] == [cron]
    assert local["on-approval"].parameters == {"workspace": "/srv/faceforge", "watching": True}
    assert [s.schedule.interval.total_seconds() for s in local["on-approval"].schedules] == [defaults.approval_poll_s]
    # the drift check: hourly by default, in both, and its retrain goes to the scheduled deployment
    drift_cron = deployments["drift"]["schedules"][0]["cron"]
    assert drift_cron == MonitoringParams().drift_cron == [s.schedule.cron for s in local["drift"].schedules][0]
    assert local["drift"].parameters == {"workspace": "/srv/faceforge"}
    from flows.drift import RETRAIN_DEPLOYMENT

    assert RETRAIN_DEPLOYMENT == f"retrain/{local['scheduled'].name}"
