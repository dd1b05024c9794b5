"""The promotion gate: fail-closed, like TFX's model "blessing".

A candidate passes only when every check holds; each failed check is recorded with its reason, and a missing
or NaN metric is a failure, never a pass by default. With no champion yet, absolute floors from params apply.

Checks (names are stable, they end up in MLflow tags and reports/gate.json):
- ``dvc_up_to_date``: ``dvc status`` reports nothing changed (the reports describe the current code and data).
- ``data_validation``: the Great Expectations suite of quality_filter succeeded.
- ``primary_metric``: ``gate.metric`` >= champion's + ``gate.min_improvement`` (or >= its floor without one).
- ``no_regression``: no other tracked metric falls more than ``gate.max_regression`` below the champion's
  (or below its floor).
- ``int8_accuracy``: the quantize stage gave its verdict, and an INT8 model is served only if it passed its
  accuracy limits (FP32 may be served whatever INT8 did).
- ``infra_validation``: a real Triton (the bundled one: python backend) loaded a python-backend copy of the
  candidate ONNX and matched ONNX Runtime; an onnxruntime/TensorRT config is only schema-validated.
- ``checksums``: the ONNX file on disk is the one exported, quantized and infra-validated.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.io.checksums import sha256_file


@dataclass(frozen=True)
class GateConfig:
    metric: str = "ijbc.tar_at_far_1e-4"
    min_improvement: float = 0.0
    max_regression: float = 0.01
    tracked: tuple[str, ...] = ()  # further metrics that must not regress
    floors: dict[str, float] = field(default_factory=dict)  # absolute minima when there is no champion
    require_dvc_up_to_date: bool = True


@dataclass
class GateResult:
    passed: bool
    checks: dict[str, bool]
    reasons: list[str]
    metrics: dict[str, float | None]
    champion: dict[str, float] | None
    scope: dict[str, str] = field(default_factory=dict)  # what a check did verify, where that is less than its name

    def as_dict(self) -> dict[str, Any]:
        return {"status": "pass" if self.passed else "fail", "passed": self.passed, "checks": self.checks,
                "reasons": self.reasons, "metrics": self.metrics, "champion": self.champion, "scope": self.scope}

    def markdown(self) -> str:
        lines = [f"## Promotion gate: **{'PASS' if self.passed else 'FAIL'}**", "", "| check | result | scope |",
                 "|---|---|---|"]
        lines += [f"| {name} | {'pass' if ok else 'FAIL'} | {self.scope.get(name, '')} |"
                  for name, ok in self.checks.items()]
        lines += ["", "| metric | candidate | champion |", "|---|---|---|"]
        for name, value in self.metrics.items():
            champ = (self.champion or {}).get(name)
            lines.append(f"| {name} | {_fmt(value)} | {_fmt(champ)} |")
        if self.reasons:
            lines += ["", "Reasons:"] + [f"- {r}" for r in self.reasons]
        return "\n".join(lines) + "\n"


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def lookup(tree: dict[str, Any], dotted: str) -> float | None:
    """``ijbc.tar_at_far_1e-4`` -> tree["ijbc"]["tar_at_far_1e-4"]; None when absent or not a finite number."""
    node: Any = tree
    for part in _split(dotted, tree):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    if isinstance(node, bool) or not isinstance(node, int | float) or not math.isfinite(node):
        return None
    return float(node)


def _split(dotted: str, tree: dict[str, Any]) -> list[str]:
    # Keys may contain dots themselves (e.g. "1e-4" does not, but set names could): match greedily.
    parts = dotted.split(".")
    out, node, i = [], tree, 0
    while i < len(parts):
        for j in range(len(parts), i, -1):
            key = ".".join(parts[i:j])
            if isinstance(node, dict) and key in node:
                out.append(key)
                node, i = node[key], j
                break
        else:
            return parts
    return out


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def evaluate_gate(config: GateConfig, reports: Path, model_path: Path, champion: dict[str, float] | None,
                  dvc_changes: Callable[[], list[str]]) -> GateResult:
    checks: dict[str, bool] = {}
    reasons: list[str] = []

    def check(name: str, ok: bool, reason: str) -> None:
        checks[name] = ok
        if not ok:
            reasons.append(f"{name}: {reason}")

    if config.require_dvc_up_to_date:
        changed = dvc_changes()
        check("dvc_up_to_date", not changed, f"outputs are stale, `dvc repro` would rerun {', '.join(changed)}")

    quality = _read(reports / "quality_filter.json") or {}
    check("data_validation", quality.get("validation", {}).get("success") is True,
          "the quality_filter Great Expectations suite did not pass (or reports/quality_filter.json is missing)")

    evaluation = _read(reports / "eval.json") or {}
    names = [config.metric, *[m for m in config.tracked if m != config.metric]]
    metrics = {name: lookup(evaluation, name) for name in names}
    primary = metrics[config.metric]
    if primary is None:
        check("primary_metric", False, f"{config.metric} is missing or NaN in reports/eval.json")
    elif champion and champion.get(config.metric) is not None:
        needed = champion[config.metric] + config.min_improvement
        check("primary_metric", primary >= needed,
              f"{config.metric} {primary:.4f} < champion {champion[config.metric]:.4f} + {config.min_improvement}")
    else:
        floor = config.floors.get(config.metric)
        check("primary_metric", floor is not None and primary >= floor,
              f"no champion and {config.metric} {primary:.4f} is below its floor {floor}" if floor is not None
              else f"no champion and no floor for {config.metric} in gate.floors")

    regressions = []
    for name in names[1:]:
        value, base = metrics[name], (champion or {}).get(name, config.floors.get(name))
        if value is None:
            regressions.append(f"{name} is missing or NaN")
        elif base is not None and value < base - (config.max_regression if champion else 0.0):
            regressions.append(f"{name} {value:.4f} < {'champion' if champion else 'floor'} {base:.4f}"
                               + (f" - {config.max_regression}" if champion else ""))
    check("no_regression", not regressions, "; ".join(regressions))

    quantize = _read(reports / "quantize.json") or {}
    actual = sha256_file(model_path) if model_path.is_file() else None
    quantized = quantize.get("sha256", {})
    serves_int8 = actual is not None and actual == quantized.get("int8")
    if "serve" not in quantize:
        check("int8_accuracy", False, "reports/quantize.json is missing or has no verdict on the variant to serve")
    else:  # FP32 may be served whatever INT8 did; INT8 only within its accuracy limits
        check("int8_accuracy", not serves_int8 or quantize.get("passed") is True,
              "the INT8 model is served but failed its accuracy limits: " + "; ".join(quantize.get("reasons", [])))

    publish = _read(reports / "publish.json") or {}
    validation = publish.get("infra_validation", {})
    check("infra_validation", validation.get("passed") is True,
          "no passing Triton infra-validation in reports/publish.json")
    scope = {"infra_validation": _validation_scope(validation)}

    export = _read(reports / "export.json") or {}
    exported = export.get("sha256", {})
    produced = set(exported.values()) | {quantized.get("int8")}  # the served file is the FP32 or the INT8 one
    consistent = (actual is not None and actual in produced
                  and publish.get("lineage", {}).get("model_sha256") == actual  # what Triton validated
                  and quantized.get("fp32") == exported.get("model.onnx"))  # INT8 measured against this export
    check("checksums", consistent,
          f"{model_path} ({(actual or 'missing')[:12]}) is not the file that was exported, quantized and validated")
    return GateResult(passed=all(checks.values()), checks=checks, reasons=reasons, metrics=metrics,
                      champion=champion, scope=scope)


def _validation_scope(validation: dict[str, Any]) -> str:
    """Said on every verdict: the bundled Triton can load only a python-backend copy of the ONNX file."""
    published = validation.get("published_backend", "onnxruntime")
    if validation.get("published_config_loaded"):
        return "the published python-backend repository was loaded in the bundled Triton"
    return (f"a python-backend copy of the same ONNX was loaded in the bundled Triton; the published {published} "
            "config was schema-validated only (no such backend in the bundled Triton)")
