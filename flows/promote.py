"""Prefect flows ``promote`` and ``rollback``: serve the approved model, or the one before it.

``promote`` is both the manual command and the approval watcher: the ``promote/on-approval`` deployment runs it
every ``orchestration.approval_poll_s`` seconds with ``watching=True``, so a person moving the ``champion``
alias in the MLflow UI is all it takes to serve a model (docs/architecture.md, "The approval loop"). The work
is in flows/promotion.py (usable without Prefect); these flows add the serving lock, the run record in Prefect
and a markdown artifact whenever something changed or was refused.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.accounts import use_account
from flows.lock import locked_workspace
from flows.promotion import serve_champion
from flows.serving import rollback_serving


def _artifact(key: str, title: str, result: dict[str, Any]) -> None:
    create_markdown_artifact(key=key, markdown=f"## {title}\n\n```json\n{json.dumps(result, indent=2)}\n```\n")


@flow(name="promote", log_prints=True)
def promote(serving_repositories: list[str] | None = None, force: bool = False, reason: str | None = None,
            backend: Literal["onnxruntime", "python"] | None = None, workspace: str = ".",
            lock_timeout_s: float | None = None, watching: bool = False) -> dict[str, Any]:
    """Serve the version holding the ``champion`` alias in every serving repository (checksums verified).

    ``watching``: run by the approval watcher, where "nothing approved yet" and a refused (gate-failed)
    champion are outcomes to record, not failures of the run."""
    use_account("watcher")  # team mode: its own MLflow account (flows/accounts.py)
    overrides = [f"publish.backend={backend}"] if backend else []
    with locked_workspace(workspace, "serving", lock_timeout_s, overrides) as params:
        result = serve_champion(params, serving_repositories, force, reason, require_champion=not watching)
    if result.get("tampered"):
        _artifact("faceforge-tampered", f"Served files differed and were put back ({len(result['tampered'])} "
                  "versions)", {"tampered": result["tampered"]})
    if result.get("newly_refused"):
        _artifact("faceforge-refused", f"Not served: {result['model']} version {result['model_version']}", result)
    elif any(r["action"] != "already_served" for r in result["repositories"]):
        _artifact("faceforge-promote", f"Serving {result['model']} version {result['model_version']}", result)
    print(json.dumps(result, sort_keys=True))
    return result


@flow(name="rollback", log_prints=True)
def rollback(to: int | None = None, serving_repository: str | None = None, workspace: str = ".",
             lock_timeout_s: float | None = None) -> dict[str, Any]:
    """Serve an earlier repository version again; the ``champion`` alias follows it."""
    use_account("watcher")
    with locked_workspace(workspace, "serving", lock_timeout_s) as params:
        result = rollback_serving(params, to, serving_repository)
    _artifact("faceforge-rollback", f"Rolled back to version {result['served_version']}", result)
    return result
