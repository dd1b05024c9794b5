"""MLflow: what a faceforge run records, and how the approved model version is found again.

Metrics are logged under their report's stage name (``eval.ijbc.tar_at_far_1e-4``, ``quantize.drop...``), so the
gate can read a champion's numbers back from its MLflow run with the same dotted keys it reads from
``reports/eval.json``. Nothing here knows about Prefect: the flows call these functions inside tasks.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from components.io.nested import numeric
from pipelines.params import Params

TAG_LIMIT = 5000  # MLflow caps tag values at 8000 characters; long values are cut, the reports hold them whole
REPORT_STAGES = ("detect", "align", "quality_filter", "pack", "train", "eval", "export", "quantize", "publish")


class MlflowUnavailable(ConnectionError):
    """The tracking server cannot be reached; transient (the CLI exits 75, the retrain flow retries)."""


def tracking_uri(params: Params) -> str:
    """``MLFLOW_TRACKING_URI`` (a team's server, set by infra/compose.yaml) wins over ``mlflow.tracking_uri``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.mlflow.tracking_uri


@contextmanager
def fail_fast(timeout_s: int = 10) -> Iterator[None]:
    """MLflow's HTTP client retries with back-off for minutes by default. A health check must answer in
    seconds, and the retrain flow's MLflow step is retried by Prefect (a visible, configured wait) instead."""
    saved = {k: os.environ.get(k) for k in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
    os.environ.update(MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT=str(timeout_s))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def check_reachable(uri: str) -> None:
    """One cheap registry call; any failure names the URI so the operator knows which server is down."""
    from mlflow import MlflowClient

    try:
        with fail_fast():
            MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
    except Exception as exc:  # noqa: BLE001 - connection, auth and DB errors all mean "cannot track"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if re.search(r"error code (401|403)\b", str(exc)):  # a basic-auth server: retrying will not help
            raise PermissionError(f"MLflow at {uri} refused the credentials ({first[:200]}): set "
                                  "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD") from None
        raise MlflowUnavailable(f"MLflow at {uri} is unreachable ({first})") from exc


def report_metrics(reports: Path) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for stage in REPORT_STAGES:
        path = reports / f"{stage}.json"
        if path.is_file():
            metrics |= numeric(json.loads(path.read_text()), stage)
    return metrics


def training_curve(path: Path) -> list[tuple[int, dict[str, float]]]:
    """``reports/train_loss.csv`` rows as (step, {train.loss, train.lr, train.samples_per_s})."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [(int(row["step"]), {f"train.{k}": float(v) for k, v in row.items() if k not in ("step", "epoch")})
                for row in csv.DictReader(f)]


def champion_metrics(uri: str, model_name: str, alias: str) -> tuple[str | None, dict[str, float] | None]:
    """(version, eval metrics of its run with the ``eval.`` prefix removed), or (None, None) without a champion."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        aliases = client.get_registered_model(model_name).aliases
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":  # nothing registered yet: floors apply
            return None, None
        raise
    if alias not in aliases:
        return None, None
    version = client.get_model_version(model_name, aliases[alias])
    run_metrics = client.get_run(version.run_id).data.metrics
    return str(version.version), {k.removeprefix("eval."): v for k, v in run_metrics.items() if k.startswith("eval.")}
