"""``faceforge serve-flows``: the cron-scheduled ``retrain`` deployment plus on-demand ``promote``/``rollback``.

``flow.serve`` style (one long-running process polls the Prefect API and runs flows in subprocesses): the
simplest way to schedule on one machine. A team with a Prefect server and a process work pool uses
``prefect.yaml`` (``prefect deploy --all``) and the worker in infra/compose.yaml instead.
"""

from __future__ import annotations

from typing import Any

from prefect import serve

from flows.promote import promote, rollback
from flows.retrain import retrain


def deployments(cron: str, workspace: str) -> list[Any]:
    """The same three deployments as prefect.yaml, for ``flow.serve`` on one machine."""
    return [
        retrain.to_deployment(name="scheduled", cron=cron, parameters={"workspace": workspace},
                              description="Rebuild with DVC, track in MLflow, register, gate."),
        promote.to_deployment(name="on-approval", parameters={"workspace": workspace},
                              description="Serve the MLflow version holding the `champion` alias."),
        rollback.to_deployment(name="manual", parameters={"workspace": workspace},
                               description="Serve the previous repository version; champion follows."),
    ]


def serve_flows(cron: str, workspace: str) -> None:
    serve(*deployments(cron, workspace))
