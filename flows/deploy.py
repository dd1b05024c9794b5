"""``faceforge serve-flows``: the cron ``retrain``, the approval watcher, the manual ``rollback`` and the hourly
``drift`` check on one machine.

``flow.serve`` style (one long-running process polls the Prefect API and runs flows in subprocesses): the
simplest way to schedule on one machine. A team with a Prefect server and a process work pool uses
``prefect.yaml`` (``prefect deploy --all``) and the worker in infra/compose.yaml: the same four deployments.

Without ``PREFECT_API_URL``, serve-flows starts a local ``prefect server`` (SQLite under ``PREFECT_HOME``, UI on
127.0.0.1) as its child and stops it on exit: Prefect's ephemeral API runs no scheduler service, so on it the
deployments would be registered and their schedules would never fire.

Why the approval watcher polls (docs/architecture.md, "The approval loop"): MLflow 3's open-source server has
registry webhooks (``model_version_alias.created``), but they need a receiver that Prefect's open-source server
does not offer, they are delivered once from a thread pool (a receiver that is down or restarting loses the
event), and they refuse private addresses unless told otherwise. A deployment that compares the ``champion``
alias with what the serving repositories serve every ``orchestration.approval_poll_s`` seconds needs neither,
misses nothing, and is idempotent across restarts because its only state is the registry and the repositories.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.settings import PREFECT_API_URL, temporary_settings

from flows.drift import drift
from flows.promote import promote, rollback
from flows.retrain import retrain
from flows.server_process import prefect_server
from pipelines.params import MonitoringParams


def deployments(cron: str, poll_s: int, workspace: str, backend: str | None = None,
                drift_cron: str | None = None) -> list[Any]:
    """The same four deployments as prefect.yaml, for ``flow.serve`` on one machine."""
    # No deployment concurrency limit on the watcher: runs that overlap wait for the serving lock and find the
    # work done (idempotent); Prefect's limit cancelled every run whose start outlived its slot's lease.
    watcher = {"workspace": workspace, "watching": True} | ({"backend": backend} if backend else {})
    return [
        retrain.to_deployment(name="scheduled", cron=cron, parameters={"workspace": workspace},
                              description="Rebuild with DVC, gate, track in MLflow, register."),
        promote.to_deployment(name="on-approval", interval=poll_s, parameters=watcher,
                              description="The approval watcher: serve the version holding `champion`."),
        rollback.to_deployment(name="manual", parameters={"workspace": workspace},
                               description="Serve the previous repository version; champion follows."),
        drift.to_deployment(name="drift", cron=drift_cron or MonitoringParams().drift_cron,
                            parameters={"workspace": workspace},
                            description="Live traffic against the served version's reference; retrain on drift."),
    ]


def serve_flows(cron: str, poll_s: int, workspace: str, backend: str | None = None, port: int = 4200,
                drift_cron: str | None = None) -> None:
    if os.environ.get("PREFECT_API_URL"):
        serve(*deployments(cron, poll_s, workspace, backend, drift_cron))
        return
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))
    # The server stops with serve-flows however serve-flows is stopped: Ctrl-C, or SIGTERM from systemd,
    # Docker or a test (which Prefect's runner takes as its own shutdown signal), or SIGKILL.
    with prefect_server(home, port, home, ui=True, stop_with_parent=True) as server:
        url = f"http://127.0.0.1:{port}/api"
        os.environ["PREFECT_API_URL"] = url  # the flow runs' subprocesses
        print(f"Prefect server (pid {server.process.pid}) on http://127.0.0.1:{port}, log {server.log}", flush=True)
        # Prefect read its settings when imported, without an API URL: the runner would start a temporary
        # server of its own and register the deployments there, where this server's UI never shows them.
        with temporary_settings(updates={PREFECT_API_URL: url}):
            serve(*deployments(cron, poll_s, workspace, backend, drift_cron))
