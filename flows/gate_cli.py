"""``faceforge gate``: run the promotion gate on the current reports and write its verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flows.gate import GateConfig, evaluate_gate
from pipelines.common import REPORTS, write_report
from pipelines.params import Params


def dvc_changes() -> list[str]:
    """Stages whose outputs are stale, through DVC's Python API (DVC's own lineage is the truth)."""
    from dvc.repo import Repo

    with Repo(".") as repo:
        return sorted(repo.status())


def gate_config(params: Params) -> GateConfig:
    g = params.gate
    return GateConfig(metric=g.metric, min_improvement=g.min_improvement, max_regression=g.max_regression,
                      tracked=tuple(g.tracked), floors=dict(g.floors), require_dvc_up_to_date=g.require_dvc_up_to_date)


def run_gate(params: Params, champion_file: Path | None = None,
             champion: dict[str, float] | None = None) -> dict[str, Any]:
    if champion_file is not None:
        if not champion_file.is_file():
            raise FileNotFoundError(f"{champion_file}: champion metrics file not found")
        champion = json.loads(champion_file.read_text())
    result = evaluate_gate(gate_config(params), REPORTS, Path(params.publish.model), champion, dvc_changes)
    payload = result.as_dict()
    write_report("gate", payload)
    (REPORTS / "gate.md").write_text(result.markdown())
    return payload
