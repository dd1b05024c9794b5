"""Serving the approved model: plan -> check -> re-embed -> publish -> switch -> activate, in one place.

:func:`serve_champion` is the one reconciliation step behind the approval watcher (a Prefect deployment on an
interval), ``faceforge promote`` and a rollback made in the MLflow UI:
- **plan**: read the ``champion`` alias and what each serving repository serves (its served manifest names the
  MLflow version); repositories already serving it need nothing, so running this every 30 s, after a restart
  or twice at once serves each alias move exactly once. Tampered served files are put back first.
- **check**: a version whose gate verdict is not ``pass`` is refused unless forced with a reason; the refusal
  is tagged on the version (once) and the previous champion stays served.
- **re-embed**: when a gallery exists (components/gallery/), every enrolled face gets a template of the version
  from its stored crop, before any repository serves it (flows/gallery.py): identify never meets a probe whose
  version has no complete template set. Except where the team accepts compatible probes
  (``gallery.accept_compatible``) and the registry measured the version compatible with the gallery's templates
  (**bridge**): then it is served first, its probes search those templates meanwhile, and re-embedding follows.
- **publish**: repositories that do not hold the version yet get it (downloaded from MLflow once, its SHA-256
  checked against the one the gate evaluated), uploaded and verified but not served.
- **switch**: each repository serves the version with its photo-in model (the alias moved back: only this).
- **activate**: the gallery enrols with it (old templates stay for a rollback, up to ``gallery.keep_versions``).
- **record**: who served what, when (and a forced promotion's reason) on the version; the challenger alias retired.
State lives in the registry and the repositories, never in the watcher, so a watcher that restarts simply looks
again. docs/architecture.md, "The approval loop".
"""

from __future__ import annotations

import getpass
import json
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.gallery.gallery import Gallery, ModelId
from components.serving.served_pair import ServedPair
from components.serving.store import open_store
from flows.gallery import gallery_in_use, prepare
from flows.lineage import registry_lineage
from flows.serving import (
    PromotionRefused,
    champion_version,
    check_tampering,
    download_model,
    now,
    registry_client,
    serving_repositories,
)
from flows.tracking import TAG_LIMIT
from pipelines.params import Params
from pipelines.publish import pipeline_spec, serving_options

REFUSED_TAG = "serving.refused"


@dataclass
class Promotion:
    """What one promotion found and did; ``result`` is what the watcher's run and ``faceforge promote`` print."""

    params: Params
    client: Any
    version: Any  # the champion's MLflow ModelVersion
    pending: list[ServedPair]  # the repositories not serving it yet
    result: dict[str, Any]
    gallery: Gallery | None = None  # the enrolled people, when there are any to keep comparable
    work: Path | None = None  # where the model file is downloaded to, once
    published: dict[str, tuple[str, int]] = field(default_factory=dict)  # url -> (action, repository version)
    _model: Path | None = None

    @property
    def model_id(self) -> ModelId:
        return ModelId(self.version.tags.get("model_sha256", ""), str(self.version.version))

    def model_file(self) -> Path:
        """The version's ONNX file from MLflow (SHA-256 checked), downloaded at most once."""
        if self._model is None:
            assert self.work is not None, "model_file() outside serve_champion's working folder"
            self._model = download_model(self.version, self.params, self.work)
        return self._model

    def gallery_behind(self) -> bool:
        """The gallery does not enrol with the version yet (a swap interrupted after the switch)."""
        return self.gallery is not None and self.gallery.active() != self.model_id


def serve_champion(params: Params, repositories: list[str] | None = None, force: bool = False,
                   reason: str | None = None, require_champion: bool = True) -> dict[str, Any]:
    """Make every serving repository serve the champion version; returns what each one did."""
    if force and not (reason and reason.strip()):
        raise ValueError("--force needs --reason: it is recorded on the model version")
    promotion = plan(params, repositories, require_champion)
    if promotion.version is None or not (promotion.pending or promotion.gallery_behind()):
        return promotion.result
    if not check(promotion, force, reason, require_champion):
        return promotion.result
    with tempfile.TemporaryDirectory() as tmp:
        promotion.work = Path(tmp)
        for step in (publish, switch, reembed) if bridge(promotion) else (reembed, publish, switch):
            step(promotion)
    activate(promotion)
    return record(promotion, force, reason)


def plan(params: Params, repositories: list[str] | None, require_champion: bool) -> Promotion:
    """The champion and the repositories that do not serve it yet (tampered served files put back first)."""
    chosen = serving_repositories(params, repositories)
    client = registry_client(params)
    name = params.mlflow.registered_model
    version = champion_version(client, params)
    if version is None:
        if require_champion:
            raise PromotionRefused(
                f"no version of {name} holds the alias {params.mlflow.champion_alias!r}: approve one in the MLflow "
                f"UI (Models -> {name} -> the version -> pencil next to Aliases -> "
                f"{params.mlflow.champion_alias!r} -> Save aliases)")
        return Promotion(params, client, None, [], {"model": name, "model_version": None, "repositories": [],
                                                    "action": "nothing approved yet"})
    pipeline = pipeline_spec(params)  # the photo-in model moves with the embedder (pipeline_version.py)
    pairs = [ServedPair(open_store(url), params.publish.model_name, pipeline) for url in chosen]
    tampered = check_tampering(client, params, {p.url: p.store for p in pairs}, pipeline, repair=True)
    serving = {p.url: p.serving() for p in pairs}
    result: dict[str, Any] = {"model": name, "model_version": str(version.version),
                              "gate_status": version.tags.get("gate.status", "missing"),
                              "repositories": [{"repository": p.url, "action": "already_served",
                                                "repository_version": serving[p.url][1]}
                                               for p in pairs if serving[p.url][0] == str(version.version)]}
    if tampered:
        result["tampered"] = tampered
    return Promotion(params, client, version, [p for p in pairs if serving[p.url][0] != str(version.version)],
                     result, gallery_in_use(params) if pipeline is not None else None)


def check(promotion: Promotion, force: bool, reason: str | None, require_champion: bool) -> bool:
    """True when the version may be served. A refusal is tagged on the version once (not on every poll) and,
    for a person's ``promote``, raised; the watcher records it and keeps the previous champion served."""
    version, result = promotion.version, promotion.result
    refused = _refusal(version, force, reason)
    if refused is None:
        return True
    name = promotion.params.mlflow.registered_model
    result["refused"] = refused
    result["newly_refused"] = REFUSED_TAG not in version.tags
    if result["newly_refused"]:
        promotion.client.set_model_version_tag(name, version.version, REFUSED_TAG,
                                               json.dumps({"reason": refused, "at": now()})[:TAG_LIMIT])
    if require_champion:
        raise PromotionRefused(f"{name} {refused}; refusing to serve it (the previous champion stays served). "
                               "Override with --force --reason '...'")
    return False


def _refusal(version: Any, force: bool, reason: str | None) -> str | None:
    """Why this version may not be served, or None. A forced promotion is recorded on the version, so the
    watcher then serves it to the other repositories too instead of refusing it there."""
    status = version.tags.get("gate.status", "missing")
    if status == "pass" or (force and reason) or version.tags.get("promote.forced") == "true":
        return None
    return (f"version {version.version} did not pass the gate (gate.status={status}: "
            f"{version.tags.get('gate.reasons') or 'no verdict recorded'})")


def bridge(promotion: Promotion) -> bool:
    """True when the version may answer from the gallery's current templates while its own are re-embedded:
    the team accepts compatible probes and the version's compatibility was measured (flows/compatibility.py)
    against exactly the model the gallery enrols with, and met BCT's criterion."""
    gallery, tags = promotion.gallery, promotion.version.tags
    if gallery is None or not promotion.params.gallery.accept_compatible:
        return False
    active = gallery.active()
    if active is None or active == promotion.model_id or tags.get("compatibility.with") != active.version \
            or tags.get("compatibility.verdict") != f"compatible with v{active.version}":
        return False
    measured = promotion.client.get_model_version(promotion.params.mlflow.registered_model, active.version)
    if measured.tags.get("model_sha256") != active.sha256:
        return False
    promotion.result["gallery"] = gallery.bridge(promotion.model_id, active, tags["compatibility.verdict"])
    return True


def reembed(promotion: Promotion) -> None:
    """The gallery holds a template of the version for every enrolled face (before anything serves it, unless
    bridged)."""
    if promotion.gallery is not None:
        promotion.result["gallery"] = promotion.result.get("gallery", {}) | prepare(
            promotion.gallery, promotion.model_id, promotion.model_file, promotion.params.gallery.reembed_batch)


def publish(promotion: Promotion) -> None:
    """Every pending repository holds the version afterwards, served or not: the model is downloaded (and
    checked) once, only for repositories that do not hold it (an alias moved back needs no upload)."""
    params = promotion.params
    lineage = registry_lineage(promotion.client, params, promotion.version)
    for pair in promotion.pending:
        existing = pair.holding(lineage)
        if existing is not None:
            promotion.published[pair.url] = ("switched", existing)
            continue
        promotion.published[pair.url] = ("published", pair.publish(
            promotion.model_file(), serving_options(params.publish, lineage), lineage))


def switch(promotion: Promotion) -> None:
    """Each pending repository serves the version with its photo-in model."""
    for pair in promotion.pending:
        action, repository_version = promotion.published[pair.url]
        promotion.result["repositories"].append({"repository": pair.url, "action": action,
                                                 "repository_version": repository_version,
                                                 "pipeline_version": pair.switch(repository_version)})


def activate(promotion: Promotion) -> None:
    """The gallery enrols with the served version from now on."""
    if promotion.gallery is not None:
        promotion.result["gallery"] = promotion.result.get("gallery", {}) | promotion.gallery.activate(
            promotion.model_id)


def record(promotion: Promotion, force: bool, reason: str | None) -> dict[str, Any]:
    """Who served what and when, on the version (``serving.last``); a served challenger is no longer waiting."""
    client, version, result = promotion.client, promotion.version, promotion.result
    name = promotion.params.mlflow.registered_model
    served = {"at": now(), "by": f"{getpass.getuser()}@{socket.gethostname()}",
              "served_versions": {r["repository"]: r.get("repository_version") for r in result["repositories"]}}
    if force and version.tags.get("gate.status") != "pass":
        served |= {"forced": True, "reason": reason}
        client.set_model_version_tag(name, version.version, "promote.forced", "true")
        client.set_model_version_tag(name, version.version, "promote.reason", reason)
    client.set_model_version_tag(name, version.version, "serving.last", json.dumps(served, sort_keys=True)[:TAG_LIMIT])
    challenger = promotion.params.mlflow.challenger_alias
    if challenger in version.aliases:  # approved and served: no longer waiting for review
        result |= _retire_challenger(client, name, challenger)
    return result | served


def _retire_challenger(client: Any, name: str, alias: str) -> dict[str, Any]:
    """Delete the alias; on a basic-auth server the watcher's account may not (MLflow grants alias deletion
    only with MANAGE, which also manages the model's permissions: flows/accounts.py), so there the alias stays
    until the next version that passes the gate takes it."""
    from mlflow.exceptions import MlflowException

    try:
        client.delete_registered_model_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code != "PERMISSION_DENIED" and "error code 403" not in str(exc):
            raise
        return {"challenger_kept": f"this account may not delete the alias {alias!r} (MLflow: MANAGE)"}
    return {}
