"""``faceforge gate``: run the promotion gate on the current reports and write its verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flows.dvc_stages import needed_stages, stale_stages
from flows.gate import GateConfig, evaluate_gate
from flows.tracking import champion_metrics, check_reachable, tracking_uri
from pipelines.common import REPORTS, write_report
from pipelines.params import Params


def gate_config(params: Params) -> GateConfig:
    g = params.gate
    return GateConfig(metric=g.metric, min_improvement=g.min_improvement, max_regression=g.max_regression,
                      tracked=tuple(g.tracked), floors=dict(g.floors), require_dvc_up_to_date=g.require_dvc_up_to_date)


def champion_from(params: Params, champion_file: Path | None) -> tuple[str | None, dict[str, float] | None]:
    """The baseline: a metrics file when given, else the registry's ``champion`` version (fail-closed: an
    unreachable registry is an error, never "no champion, floors apply")."""
    if champion_file is not None:
        if not champion_file.is_file():
            raise FileNotFoundError(f"{champion_file}: champion metrics file not found")
        return str(champion_file), json.loads(champion_file.read_text())
    uri = tracking_uri(params)
    check_reachable(uri)
    return champion_metrics(uri, params.mlflow.registered_model, params.mlflow.champion_alias)


def run_gate(params: Params, champion: dict[str, float] | None) -> dict[str, Any]:
    result = evaluate_gate(gate_config(params), REPORTS, Path(params.publish.model), champion,
                           lambda: [s for s in stale_stages(Path(".")) if s in needed_stages(Path("."))])
    payload = result.as_dict()
    write_report("gate", payload)
    (REPORTS / "gate.md").write_text(result.markdown())
    return payload
