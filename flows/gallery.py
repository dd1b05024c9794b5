"""The gallery's side of serving: which gallery, and its re-embedding before a model version answers.

A promotion (flows/promotion.py) and a rollback call :func:`prepare` before they switch the served model
and activate the version in the gallery after, so no identify request meets a probe version whose templates
are not complete, and new faces enrol with the version that is served. docs/gallery.md, "Model swaps".
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url
from tqdm import tqdm

from components.gallery.gallery import Gallery, ModelId
from components.serving.served_pair import ServedPair
from flows.accounts import account
from pipelines.params import Params

if TYPE_CHECKING:  # FastAPI is loaded by the service only, not by every promotion
    from components.gallery.service import ServiceAccount


def database_url(params: Params) -> str:
    """``FACEFORGE_GALLERY_DATABASE`` (a team's PostgreSQL, password included) wins over ``gallery.database``."""
    return os.environ.get("FACEFORGE_GALLERY_DATABASE") or params.gallery.database


def crops_url(params: Params) -> str:
    return os.environ.get("FACEFORGE_GALLERY_CROPS") or params.gallery.crops


def open_gallery(params: Params) -> Gallery:
    return Gallery(database_url(params), crops_url(params), params.gallery.keep_versions,
                   params.gallery.index_from, params.gallery.accept_compatible)


def service_accounts() -> list[ServiceAccount]:
    """The gallery service's accounts from the environment, as the MLflow ones (flows/accounts.account):
    ``FACEFORGE_GALLERY_<ROLE>_USERNAME`` (default ``faceforge-<role>``) and ``..._PASSWORD`` or
    ``..._PASSWORD_FILE`` (a secret file)."""
    from components.gallery.service import ROLES, ServiceAccount

    return [ServiceAccount(found.role, found.username, found.password)
            for found in (account(role, "gallery") for role in ROLES) if found is not None]


def gallery_in_use(params: Params) -> Gallery | None:
    """The gallery, or None while the embedded default was never created (nobody enrolled): a promotion then
    has nothing to re-embed and creates no file."""
    url = make_url(database_url(params))
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        return None
    return open_gallery(params)


def prepare(gallery: Gallery, model: ModelId, model_file: Callable[[], Path], batch: int) -> dict[str, Any]:
    """Every enrolled face gets a template of ``model`` from its stored crop (``model_file`` is fetched only
    when some face needs one); a rerun after a crash adds only what is missing."""
    from components.gallery.reembed import CropEmbedder

    if not gallery.needs_migration(model):
        return {"model": model.json(), "re_embedded": 0}
    loaded: list[CropEmbedder] = []

    def embedder(crops: Any) -> Any:  # an empty gallery marks the version ready without fetching the model
        if not loaded:
            loaded.append(CropEmbedder(model_file()))
        return loaded[0](crops)

    with tqdm(desc=f"re-embed gallery for {model.label}", unit="face", disable=None) as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        return gallery.migrate(model, embedder, batch, progress)


def prepare_repository_version(gallery: Gallery, pair: ServedPair, version: int, batch: int,
                               ) -> tuple[ModelId, dict[str, Any]]:
    """:func:`prepare` for repository version ``version`` of ``pair``, re-embedding (where needed) with the
    repository's own model file (its manifest's SHA-256 checked): a rollback and ``faceforge gallery migrate``."""
    sha256, mlflow_version = pair.model(version)
    model = ModelId(sha256, mlflow_version or "")
    with tempfile.TemporaryDirectory() as tmp:
        return model, prepare(gallery, model, lambda: pair.model_file(version, Path(tmp)), batch)


def migrate_to_served(params: Params, gallery: Gallery, repository: str | None = None) -> dict[str, Any]:
    """``faceforge gallery migrate``: the gallery gets templates of the version a serving repository serves now
    and enrols with it. For a served model that changed without a promotion (a candidate repository served by
    hand, a repository restored from a backup); a promotion and a rollback do this themselves."""
    from components.serving.store import open_store
    from flows.serving import serving_repositories
    from pipelines.publish import pipeline_spec

    url = serving_repositories(params, [repository] if repository else None)[0]
    pair = ServedPair(open_store(url), params.publish.model_name, pipeline_spec(params))
    served = pair.serving()[1]
    if served is None:
        raise ValueError(f"{url}: serves no version of {pair.embedder}: nothing to migrate the gallery to")
    model, done = prepare_repository_version(gallery, pair, served, params.gallery.reembed_batch)
    return {"repository": url, "repository_version": served} | done | gallery.activate(model)
