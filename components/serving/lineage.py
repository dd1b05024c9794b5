"""What produced a served model and how it was judged: one record, wherever it is read.

The same :class:`Lineage` goes into a version's ``faceforge.json`` manifest (whole), into ``config.pbtxt``
``parameters`` (its scalars, so ``curl .../v2/models/<name>/config`` shows them), and is what
``faceforge lineage`` prints. The publish stage builds it from files (reports, ``dvc.lock``); promotion builds it
from the MLflow registry, which adds the run, the model version, the gate verdict and the Prefect flow run.
Fields a source cannot know stay ``None`` rather than being guessed.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

_HEADLINE = re.compile(r"(^|\.)(tar_at_far_[^.]+|accuracy|rank1)$")


def headline_metrics(flat: dict[str, float]) -> dict[str, float]:
    """The evaluation numbers a lineage carries (TAR@FAR, accuracies, rank-1), from flat ``eval`` report keys:
    the same selection whether they come from ``reports/eval.json`` or from the MLflow run."""
    return {k: v for k, v in sorted(flat.items()) if _HEADLINE.search(k)}


def describe_origin(record: dict[str, Any] | None, markdown: bool = False) -> str:
    """One line for what a model started from or was distilled from (pipelines/train.model_record): plain for
    ``faceforge lineage`` (checksums shortened), Markdown for the model card (full checksums, the conversion)."""
    if not record:
        return "random weights"

    def code(text: str) -> str:
        return f"`{text}`" if markdown else text

    label = "SHA-256" if markdown else "sha256"
    if record.get("version") is not None:  # a warm retrain (pipelines/warm_start.py)
        carried = (f": {record['carried_identities']} identities' centres carried, {record['new_identities']} "
                   f"new, {record['dropped_identities']} dropped" if "carried_identities" in record else "")
        kept = (f"; trained to stay comparable with its templates (BCT, weight {record['compatible_weight']:g})"
                if record.get("compatible_weight") else "")
        return (f"{record.get('registered_model', 'registered')} version {record['version']}, warm "
                f"(train output {code(record['train_md5'])}{carried}{kept})")
    untrained = ", served as imported: not trained" if record.get("trained") is False else ""
    if record.get("source"):
        sha = record["source_sha256"] if markdown else record["source_sha256"][:12]
        converted = f", converted: {json.dumps(record.get('conversion', {}), sort_keys=True)}" if markdown else ""
        return f"{code(record['source'])} ({label} {code(sha)}, licence {record['licence']}{converted}{untrained})"
    sha = record.get("sha256")
    return code(str(record.get("init_from") or record.get("teacher"))) + (
        f" ({label} {code(sha if markdown else sha[:12])}{untrained})" if sha else untrained)


@dataclass(frozen=True)
class Lineage:
    model_sha256: str
    git_revision: str = "unknown"
    dvc_data_hash: str = "unknown"  # DVC's md5 of the packed training data (dvc.lock)
    dvc_lock_sha256: str | None = None  # the exact dvc.lock that, at git_revision, `dvc pull`s every output
    dvc_remote: str | None = None  # where those outputs were pushed
    dvc_commit: str | None = None  # git commit of the run (code + dvc.lock + metrics): checkout, `dvc pull`
    served_variant: str | None = None  # "fp32" or "int8": which of the quantize stage's two models this is
    served_variant_reason: str | None = None  # the quantize verdict's reasons for serving it
    metrics: dict[str, float] = field(default_factory=dict)
    # accept/reject cosine thresholds per FAR from the IJB-format evaluation, with the impostor pairs behind
    # them (components/evaluation/roc.decision_thresholds): {"far_1e-4": {"cosine": .., "impostor_pairs": ..}}
    thresholds: dict[str, dict[str, Any]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)  # flattened ``train.*`` params the model was trained with
    # what training started from (pipelines/train.start_record): an imported model's source, SHA-256, licence
    # and conversion; None for random weights
    start: dict[str, Any] | None = None
    teacher: dict[str, Any] | None = None  # the model it was distilled from (the same record), if any
    gate_status: str | None = None
    gate_reasons: tuple[str, ...] = ()
    mlflow_run_id: str | None = None
    mlflow_model_version: str | None = None
    prefect_flow_run_id: str | None = None

    def manifest(self) -> dict[str, Any]:
        """The whole record, JSON-ready (a version's ``faceforge.json`` keeps it under ``lineage``)."""
        return asdict(self) | {"gate_reasons": list(self.gate_reasons)}

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> Lineage:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["gate_reasons"] = tuple(values.get("gate_reasons") or ())
        return cls(**values)

    def config_parameters(self) -> dict[str, str]:
        """Scalars as Triton ``parameters`` (string values); metrics as one JSON string; nothing unknown."""
        out = {k: str(v) for k, v in self.manifest().items()
               if v is not None and not isinstance(v, dict | list)}
        if self.gate_reasons:
            out["gate_reasons"] = "; ".join(self.gate_reasons)
        out["metrics"] = json.dumps(self.metrics, sort_keys=True)
        out |= self.threshold_tags()
        return out

    def threshold_tags(self, prefix: str = "threshold_") -> dict[str, str]:
        """``<prefix>far_1e-4`` = the cosine (``null`` where unresolvable) and ``thresholds`` = the whole record
        as JSON: what Triton ``parameters`` (``threshold_``) and the MLflow version tags (``threshold.``) carry."""
        if not self.thresholds:
            return {}
        out = {f"{prefix}{far}": "null" if t.get("cosine") is None else str(t["cosine"])
               for far, t in self.thresholds.items()}
        return out | {"thresholds": json.dumps(self.thresholds, sort_keys=True)}
