"""Prefect flows ``promote`` and ``rollback``: serve the approved model, or the one before it.

The work is in flows/serving.py (usable without Prefect); these flows add the workspace lock, the run record
in Prefect and a markdown artifact saying what each serving repository now serves.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.lock import locked_workspace
from flows.serving import promote as promote_champion
from flows.serving import rollback_serving


def _artifact(key: str, title: str, result: dict[str, Any]) -> None:
    create_markdown_artifact(key=key, markdown=f"## {title}\n\n```json\n{json.dumps(result, indent=2)}\n```\n")


@flow(name="promote", log_prints=True)
def promote(targets: list[str] | None = None, force: bool = False, reason: str | None = None,
            backend: Literal["onnxruntime", "python"] | None = None, workspace: str = ".",
            lock_timeout_s: float | None = None) -> dict[str, Any]:
    """Publish the version holding the ``champion`` alias to the serving repositories (checksums verified)."""
    overrides = [f"publish.backend={backend}"] if backend else []
    with locked_workspace(workspace, "promote", lock_timeout_s, overrides) as params:
        result = promote_champion(params, targets, force, reason)
    _artifact("faceforge-promote", f"Serving {result['model']} version {result['model_version']}", result)
    return result


@flow(name="rollback", log_prints=True)
def rollback(to: int | None = None, target: str | None = None, workspace: str = ".",
             lock_timeout_s: float | None = None) -> dict[str, Any]:
    """Serve an earlier repository version again; the ``champion`` alias follows it."""
    with locked_workspace(workspace, "rollback", lock_timeout_s) as params:
        result = rollback_serving(params, to, target)
    _artifact("faceforge-rollback", f"Rolled back to version {result['served_version']}", result)
    return result
