"""A registered model version's lineage, from the registry and the serving repositories (``faceforge lineage``).

The :class:`~components.serving.lineage.Lineage` built here from MLflow (version tags, its run's metrics, params
and tags) is the same record promotion writes into the served version's manifest and Triton config. What MLflow
does not record is said, not invented: an alias move carries no author and no time in MLflow's registry, so the
approval shows when and from which host the version was last served (the ``serving.last`` tag).
"""

from __future__ import annotations

import json
import os
from typing import Any

from components.serving.lineage import Lineage, describe_origin, headline_metrics
from components.serving.repository import complete_versions, read_manifest, served
from components.serving.store import open_store
from pipelines.params import Params


def registry_lineage(client: Any, params: Params, version: Any) -> Lineage:
    run = client.get_run(version.run_id)
    metrics = headline_metrics({k.removeprefix("eval."): v for k, v in run.data.metrics.items()
                                if k.startswith("eval.")})
    tags = version.tags
    return Lineage(model_sha256=tags.get("model_sha256", ""), git_revision=tags.get("git_revision", "unknown"),
                   dvc_data_hash=tags.get("dvc_data_hash", "unknown"), dvc_lock_sha256=tags.get("dvc_lock_sha256"),
                   dvc_remote=tags.get("dvc_remote"), dvc_commit=tags.get("dvc_commit"),
                   served_variant=tags.get("served_variant"), served_variant_reason=tags.get("served_variant_reason"),
                   metrics=metrics, thresholds=json.loads(tags.get("thresholds", "{}")),
                   params={k: v for k, v in run.data.params.items() if k.startswith("train.")},
                   start=json.loads(tags["start"]) if tags.get("start") else None,
                   teacher=json.loads(tags["teacher"]) if tags.get("teacher") else None,
                   gate_status=tags.get("gate.status"),
                   gate_reasons=tuple(r for r in tags.get("gate.reasons", "").split("; ") if r),
                   mlflow_run_id=version.run_id, mlflow_model_version=str(version.version),
                   prefect_flow_run_id=run.data.tags.get("prefect.flow_run_id") or None)


def resolve_version(client: Any, params: Params, ref: str) -> Any:
    """``champion`` (or any alias) or a version number -> the registry's ModelVersion."""
    name = params.mlflow.registered_model
    if ref.isdigit():
        return client.get_model_version(name, ref)
    return client.get_model_version_by_alias(name, ref)


def where_served(repositories: list[str], model_name: str, model_version: str) -> list[dict[str, Any]]:
    """Every repository version holding this MLflow version, and whether the repository serves it now."""
    found = []
    for url in repositories:
        store = open_store(url)
        now = served(store, model_name)
        for number in complete_versions(store, model_name):
            manifest = read_manifest(store, model_name, number)
            if manifest.get("lineage", {}).get("mlflow_model_version") == model_version:
                found.append({"repository": url, "repository_version": number, "served_now": number in now,
                              "sha256": manifest.get("sha256", {}).get("model.onnx")})
    return found


def describe(client: Any, params: Params, ref: str, repositories: list[str]) -> dict[str, Any]:
    """Everything ``faceforge lineage`` prints, as one JSON-ready dict."""
    version = resolve_version(client, params, ref)
    lineage = registry_lineage(client, params, version)
    serving_record = json.loads(version.tags.get("serving.last", "null") or "null")
    prefect_ui = os.environ.get("PREFECT_API_URL", "").removesuffix("/api")
    return {
        "model": params.mlflow.registered_model, "version": str(version.version), "aliases": list(version.aliases),
        "created": version.creation_timestamp, "created_by": version.user_id or None,
        "lineage": lineage.manifest(),
        "approval": {
            "alias_history": "not recorded by MLflow (an alias move has no author or time in the registry)",
            "last_served": serving_record,
            "refused": json.loads(version.tags["serving.refused"]) if "serving.refused" in version.tags else None,
            "forced": version.tags.get("promote.forced") == "true", "force_reason": version.tags.get("promote.reason"),
        },
        "compatibility": {k.removeprefix("compatibility."): v for k, v in sorted(version.tags.items())
                          if k.startswith("compatibility.")} or None,
        "served": where_served(repositories, params.publish.model_name, str(version.version)),
        "prefect_flow_run": (f"{prefect_ui}/runs/flow-run/{lineage.prefect_flow_run_id}"
                             if prefect_ui and lineage.prefect_flow_run_id else lineage.prefect_flow_run_id),
    }


def _thresholds_text(thresholds: dict[str, dict[str, Any]]) -> str:
    """``1e-3: 0.31, 1e-4: unresolvable (cosine per FAR; 25,000 impostor pairs)``, or ``-`` without any."""
    if not thresholds:
        return "-"
    cosines = ", ".join(f"{far.removeprefix('far_')}: {'unresolvable' if t['cosine'] is None else t['cosine']}"
                        for far, t in thresholds.items())
    pairs = next(iter(thresholds.values()))["impostor_pairs"]
    return f"{cosines} (cosine per FAR; {pairs:,} impostor pairs)"


def render_text(record: dict[str, Any]) -> str:
    """The summary a person reads in a terminal; ``--json`` gives every field."""
    lineage, approval = record["lineage"], record["approval"]
    lines = [f"{record['model']} version {record['version']}  aliases: {', '.join(record['aliases']) or '-'}",
             f"  model sha256      {lineage['model_sha256']}",
             f"  thresholds        {_thresholds_text(lineage.get('thresholds') or {})}",
             f"  variant           {lineage.get('served_variant') or '-'}"
             + (f" ({lineage['served_variant_reason']})" if lineage.get("served_variant_reason") else ""),
             f"  started from      {describe_origin(lineage.get('start'))}",
             f"  distilled from    {describe_origin(lineage['teacher']) if lineage.get('teacher') else '-'}",
             f"  git revision      {lineage['git_revision']}",
             f"  training data     DVC md5 {lineage['dvc_data_hash']}",
             f"  dvc.lock          sha256 {lineage['dvc_lock_sha256'] or '-'}",
             f"  DVC remote        {lineage['dvc_remote'] or '-'}",
             f"  run commit        {lineage['dvc_commit'] or '-'} (git checkout it, then `dvc pull`; or at the git "
             f"revision: `faceforge lineage {record['version']} --dvc-lock > dvc.lock`, `dvc pull`)",
             f"  MLflow run        {lineage['mlflow_run_id']}",
             f"  Prefect flow run  {record['prefect_flow_run'] or '-'}",
             f"  gate              {lineage['gate_status'] or 'no verdict'}"
             + "".join(f"\n                    - {r}" for r in lineage["gate_reasons"])]
    compatibility = record.get("compatibility") or {}
    lines.append(f"  compatibility     {compatibility.get('verdict', 'not measured')}"
                 + (f" (measured against v{compatibility['with']})" if compatibility.get("with") else ""))
    if approval["forced"]:
        lines.append(f"  forced            yes: {approval['force_reason']}")
    if approval["refused"]:
        lines.append(f"  refused serving   {approval['refused']['at']}: {approval['refused']['reason']}")
    last = approval["last_served"]
    lines.append(f"  last served       {last['at']} by {last['by']}" if last else "  last served       never")
    lines.append(f"  alias history     {approval['alias_history']}")
    lines.append("  served in         " + ("; ".join(
        f"{s['repository']} v{s['repository_version']}{' (serving now)' if s['served_now'] else ''}"
        for s in record["served"]) or "no configured serving repository holds it"))
    lines.append("  metrics           " + ", ".join(f"{k}={v:.4f}" for k, v in lineage["metrics"].items()))
    lines.append("  params            " + ", ".join(f"{k.removeprefix('train.')}={v}"
                                                   for k, v in sorted(lineage["params"].items())))
    return "\n".join(lines)


def dvc_lock_text(client: Any, params: Params, ref: str) -> str:
    """The dvc.lock a registered version was built from (its run's ``dvc.lock`` artifact), checked against the
    SHA-256 on the version."""
    import hashlib
    import tempfile
    from pathlib import Path

    version = resolve_version(client, params, ref)
    with tempfile.TemporaryDirectory() as tmp:
        text = Path(client.download_artifacts(version.run_id, "dvc/dvc.lock", tmp)).read_text()
    expected = version.tags.get("dvc_lock_sha256")
    if hashlib.sha256(text.encode()).hexdigest() != expected:
        raise ValueError(f"version {version.version}: the run's dvc.lock does not have the recorded SHA-256 {expected}")
    return text
