"""Enrolled people, kept comparable across model swaps.

A template is compared only with probes of its own model version (its ``model_sha256``), or, where the team
accepts it (``accept_compatible``), of a version measured compatible with it (``bridge``): the served photo-in
model says which embedder answered (components/serving/client.PhotoEmbedding), and a probe whose version the
gallery holds no templates of is an error naming both versions, never a silent score. Every answer names the
version of the probe and of the templates. docs/gallery.md.

- **enrol**: photos go through the served photo-in model (its detection, alignment and quality); every photo
  must show exactly one face, or nothing is enrolled. The aligned crop goes to the crop store, the template to
  the database, in one transaction. Only the gallery's active version enrols: while a swap is under way the
  served model and the gallery disagree for a moment, and enrolling then would leave a face without a template
  of one of them.
- **migrate**: every face without a template of a new version gets one, embedded from its stored crop with the
  new model, in committed batches: a crash loses nothing and a rerun adds only what is missing. Enrol and remove
  wait for it (they are refused while a version is ``building``); identify keeps answering from ready versions.
- **activate**: after the served model switched, the new version enrols; old versions' templates stay for a
  rollback until ``keep_versions`` newer ones were activated.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
from sqlalchemy import and_, delete, func, insert, select, update

from components.gallery.crops import CropStore
from components.gallery.database import (
    compatible,
    faces,
    generation,
    open_database,
    templates,
    versions,
    writing,
)
from components.gallery.search import IndexedTemplates, Templates, embedding_matrix
from components.serving.client import PhotoEmbedding


class GalleryError(ValueError):
    """A request the gallery refuses (bad photo, unknown identity, versions that do not match): one line."""


class PhotoEmbedder(Protocol):
    """The served photo-in model (components/serving/client.FaceClient)."""

    def embed(self, photos: Sequence[bytes], crops: bool = False) -> list[PhotoEmbedding]: ...
    def thresholds(self) -> dict[str, float | None]: ...


@dataclass(frozen=True)
class ModelId:
    """A model version as the gallery keys it: the embedder's SHA-256; ``version`` is its MLflow version."""

    sha256: str
    version: str = ""

    @property
    def label(self) -> str:
        return f"version {self.version} (sha256 {self.sha256[:12]})" if self.version else f"sha256 {self.sha256[:12]}"

    def json(self) -> dict[str, str]:
        return {"version": self.version, "sha256": self.sha256}


def _now() -> datetime:
    return datetime.now(UTC)


def _probe_model(face: PhotoEmbedding, what: str) -> ModelId:
    if not face.model_sha256:
        raise GalleryError(f"{what}: the served photo-in model does not say which embedder answered (published "
                           "before galleries existed): promote or publish the model again")
    return ModelId(face.model_sha256, face.model_version or "")


class Gallery:
    def __init__(self, database_url: str, crops_url: str, keep_versions: int = 2,
                 index_from: int = 200_000, accept_compatible: bool = False) -> None:
        self.engine = open_database(database_url)
        self.crops = CropStore(crops_url)
        self.keep_versions, self.index_from = keep_versions, index_from
        self.accept_compatible = accept_compatible
        # model sha256 -> (generation, templates)
        self._loaded: dict[str, tuple[int, Templates | IndexedTemplates]] = {}

    # -- versions ------------------------------------------------------------------------------------------
    def versions(self) -> list[dict[str, Any]]:
        """Model versions with templates here: state, whether active, templates held."""
        with self.engine.connect() as connection:
            counts = dict(connection.execute(select(templates.c.model_sha256, func.count())
                                             .group_by(templates.c.model_sha256)).all())
            rows = connection.execute(select(versions).order_by(versions.c.updated_at)).all()
        return [{"model_version": r.model_version, "model_sha256": r.model_sha256, "state": r.state,
                 "active": bool(r.active), "templates": int(counts.get(r.model_sha256, 0))} for r in rows]

    def active(self) -> ModelId | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(versions).where(versions.c.active)).first()
        return ModelId(row.model_sha256, row.model_version) if row else None

    def _refuse_while_building(self, connection: Any, what: str) -> None:
        building = connection.execute(select(versions).where(versions.c.state == "building")).first()
        if building is not None:
            raise GalleryError(f"{what}: the gallery is re-embedding its faces for "
                               f"{ModelId(building.model_sha256, building.model_version).label} (a model swap); "
                               "retry when it has finished")

    # -- enrol, remove, list -------------------------------------------------------------------------------
    def enrol(self, identity: str, photos: Sequence[tuple[str, bytes]], embedder: PhotoEmbedder) -> dict[str, Any]:
        """Enrol ``photos`` (name, bytes) as ``identity``: all of them, or none when any one is refused."""
        identity = identity.strip()
        if not identity or len(identity) > 256:
            raise GalleryError(f"identity {identity!r}: give a name of 1 to 256 characters")
        if not photos:
            raise GalleryError(f"enrol {identity}: no photo given")
        embedded = embedder.embed([data for _, data in photos], crops=True)
        model = _probe_model(embedded[0], f"enrol {identity}")
        for (name, _), face in zip(photos, embedded, strict=True):
            if face.status != "ok":
                raise GalleryError(f"{name}: {face.status}: {face.detail} (nothing enrolled)")
            if face.faces is not None and face.faces != 1:
                raise GalleryError(f"{name}: {face.faces} faces found; enrol photos that show only {identity} "
                                   "(nothing enrolled)")
            if face.model_sha256 != model.sha256:
                raise GalleryError(f"{name}: the served model changed while enrolling; retry (nothing enrolled)")
        shas = [hashlib.sha256(data).hexdigest() for _, data in photos]
        with self.engine.connect() as connection:
            self._check_enrols_with(connection, model, identity)
            known = {r.photo_sha256: r.identity for r in connection.execute(
                select(faces.c.photo_sha256, faces.c.identity).where(faces.c.photo_sha256.in_(shas)))}
        for (name, _), sha in zip(photos, shas, strict=True):
            if known.get(sha, identity) != identity:
                raise GalleryError(f"{name}: this photo is already enrolled as {known[sha]!r} (nothing enrolled)")
        seen = set(known)
        new = []
        for (name, _), sha, face in zip(photos, shas, embedded, strict=True):
            if sha not in seen:  # enrolled before, or twice in this request: once
                seen.add(sha)
                new.append((name, sha, face))
        crops = [self.crops.put(face.crop) for _, _, face in new]  # content-addressed: a retry rewrites the same
        with writing(self.engine) as connection:
            self._check_enrols_with(connection, model, identity)
            if connection.execute(select(versions).where(versions.c.model_sha256 == model.sha256)).first() is None:
                connection.execute(insert(versions).values(model_sha256=model.sha256, model_version=model.version,
                                                           state="ready", active=True, updated_at=_now()))
            for (_, sha, face), crop in zip(new, crops, strict=True):
                face_id = connection.execute(insert(faces).values(
                    identity=identity, photo_sha256=sha, crop_sha256=crop, enrolled_at=_now())).inserted_primary_key[0]
                connection.execute(insert(templates).values(
                    face_id=face_id, model_sha256=model.sha256, model_version=model.version, identity=identity,
                    embedding=face.embedding.astype(np.float32).tobytes()))
        return {"identity": identity, "enrolled": len(new), "already_enrolled": len(photos) - len(new),
                "template_version": model.json()}

    def _check_enrols_with(self, connection: Any, model: ModelId, identity: str) -> None:
        self._refuse_while_building(connection, f"enrol {identity}")
        row = connection.execute(select(versions).where(versions.c.active)).first()
        if row is not None and row.model_sha256 != model.sha256:
            raise GalleryError(
                f"enrol {identity}: the served model is {model.label}, the gallery enrols with "
                f"{ModelId(row.model_sha256, row.model_version).label}: a model swap is not finished (retry in a "
                "minute) or the served model changed without a migration (faceforge gallery migrate)")

    def remove(self, identity: str) -> dict[str, Any]:
        """Delete the identity's faces, templates (every version) and crops."""
        with writing(self.engine) as connection:
            self._refuse_while_building(connection, f"remove {identity}")
            crops = list(connection.execute(select(faces.c.crop_sha256).where(faces.c.identity == identity))
                         .scalars())
            if not crops:
                raise GalleryError(f"remove {identity}: no such identity in the gallery (nothing removed)")
            ids = select(faces.c.id).where(faces.c.identity == identity).scalar_subquery()
            removed = connection.execute(delete(templates).where(templates.c.face_id.in_(ids))).rowcount
            connection.execute(delete(faces).where(faces.c.identity == identity))
        for sha in crops:  # after the commit: a crash leaves an unreferenced crop, never a row without its crop
            self.crops.delete(sha)
        return {"identity": identity, "faces_removed": len(crops), "templates_removed": removed}

    def list(self) -> list[dict[str, Any]]:
        """Identities with their number of faces and the versions their templates exist for."""
        with self.engine.connect() as connection:
            counts = connection.execute(select(faces.c.identity, func.count()).group_by(faces.c.identity)
                                        .order_by(faces.c.identity)).all()
            held = connection.execute(select(templates.c.identity, templates.c.model_version,
                                             templates.c.model_sha256).distinct()).all()
        by_identity: dict[str, list[dict[str, str]]] = {}
        for row in held:
            by_identity.setdefault(row.identity, []).append(ModelId(row.model_sha256, row.model_version).json())
        return [{"identity": identity, "faces": int(n), "template_versions": by_identity.get(identity, [])}
                for identity, n in counts]

    # -- identify, verify ----------------------------------------------------------------------------------
    def templates_of(self, model: ModelId) -> tuple[ModelId, Templates | IndexedTemplates]:
        """The templates probes of ``model`` are compared with, and their version: its own set when ready, else
        (where accepted) the set of a version it was measured compatible with. Reloaded only when the gallery
        changed since the last load."""
        with self.engine.connect() as connection:
            now = generation(connection)
            source = self._searched(connection, model)
            cached = self._loaded.get(source.sha256)
            if cached and cached[0] == now:
                return source, cached[1]
            loaded = self._load(connection, source.sha256)
        self._loaded[source.sha256] = (now, loaded)
        return source, loaded

    def _searched(self, connection: Any, model: ModelId) -> ModelId:
        """The ready template set probes of ``model`` may search, or the one-line refusal naming both versions."""
        ready = {r.model_sha256: ModelId(r.model_sha256, r.model_version) for r in connection.execute(
            select(versions).where(versions.c.state == "ready"))}
        if model.sha256 in ready:
            return model
        bridged = [ready[sha] for sha in connection.execute(
            select(compatible.c.template_sha256).where(compatible.c.probe_sha256 == model.sha256)).scalars()
            if sha in ready]
        if bridged and self.accept_compatible:
            return bridged[0]
        row = connection.execute(select(versions).where(versions.c.model_sha256 == model.sha256)).first()
        why = "is still being built" if row is not None else "does not exist"
        hint = (f" (it was measured compatible with {bridged[0].label}: gallery.accept_compatible lets those "
                "answer)" if bridged else "")
        raise GalleryError(f"the probe was embedded by {model.label}, whose gallery template set {why}; the "
                           f"gallery holds templates of {', '.join(m.label for m in ready.values()) or 'no version'}"
                           f": comparing across versions would give meaningless scores{hint}")

    def bridge(self, probe: ModelId, templates_of: ModelId, verdict: str) -> dict[str, Any]:
        """Record that probes of ``probe`` may search the templates of ``templates_of``, measured compatible
        (``verdict``, the registry's): a promotion then serves ``probe`` before its own templates exist."""
        with writing(self.engine) as connection:
            key = and_(compatible.c.probe_sha256 == probe.sha256,
                       compatible.c.template_sha256 == templates_of.sha256)
            if connection.execute(select(compatible).where(key)).first() is None:
                connection.execute(insert(compatible).values(probe_sha256=probe.sha256,
                                                             template_sha256=templates_of.sha256,
                                                             verdict=verdict[:256], created_at=_now()))
        return {"probes_of": probe.json(), "search_templates_of": templates_of.json(), "verdict": verdict}

    @staticmethod
    def _trained_index(connection: Any, mine: Any, count: int) -> tuple[IndexedTemplates, int]:
        """An empty index trained on a random sample of the version's templates (its own function, so the
        sample is freed before the templates are added: the peak memory of a 10^6 gallery's load)."""
        sample = embedding_matrix(connection.execute(select(templates.c.embedding).where(mine).order_by(func.random())
                                            .limit(min(count, 64_000))).scalars().all())
        return IndexedTemplates.train(sample, count), sample.shape[1]

    def _load(self, connection: Any, sha256: str) -> Templates | IndexedTemplates:
        """Exact below ``index_from`` templates; above, an index built chunk by chunk from the database."""
        mine = templates.c.model_sha256 == sha256
        count = connection.execute(select(func.count()).select_from(templates).where(mine)).scalar_one()
        rows = select(templates.c.embedding, templates.c.identity, templates.c.face_id).where(mine) \
            .order_by(templates.c.face_id)
        if count < self.index_from:
            result = connection.execute(rows).all()
            dim = len(result[0].embedding) // 4 if result else 0
            return Templates.build([r.embedding for r in result], [r.identity for r in result], dim)
        index, dim = self._trained_index(connection, mine, count)
        zero = bytes(4 * dim)

        def chunks() -> Any:
            for part in connection.execution_options(yield_per=20_000).execute(rows).partitions():
                yield (embedding_matrix([r.embedding for r in part]), [r.identity for r in part],
                       [r.face_id for r in part])

        def exact(face_ids: np.ndarray) -> np.ndarray:
            wanted = [int(i) for i in face_ids]
            with self.engine.connect() as reading:
                found = dict(reading.execute(select(templates.c.face_id, templates.c.embedding)
                                             .where(mine, templates.c.face_id.in_(wanted))).all())
            # a face removed since the index was built scores 0 until the next request reloads (generation)
            return embedding_matrix([found.get(i, zero) for i in wanted])

        return index.add(chunks(), exact)

    def _probe(self, name: str, data: bytes, embedder: PhotoEmbedder) -> tuple[PhotoEmbedding, ModelId]:
        face = embedder.embed([data])[0]
        if face.status != "ok":
            raise GalleryError(f"{name}: {face.status}: {face.detail}")
        return face, _probe_model(face, name)

    def identify(self, name: str, data: bytes, embedder: PhotoEmbedder, top_k: int = 5,
                 threshold: float | None = None) -> dict[str, Any]:
        """The ``top_k`` enrolled identities closest to the photo's face, with the versions that answered.
        ``threshold`` (the served one): the best match is named only above it, else the person is unknown."""
        face, model = self._probe(name, data, embedder)
        source, searched = self.templates_of(model)
        matches = searched.top(face.embedding, top_k)
        known = matches[0][0] if matches and threshold is not None and matches[0][1] > threshold else None
        return {"probe": name, "probe_version": model.json(), "template_version": source.json(),
                "matches": [{"identity": i, "score": round(s, 6)} for i, s in matches],
                "threshold": threshold, "identity": known}

    def verify(self, identity: str, name: str, data: bytes, embedder: PhotoEmbedder,
               threshold: float) -> dict[str, Any]:
        """Is the photo's face ``identity``? Its best template's score against the served threshold."""
        face, model = self._probe(name, data, embedder)
        source, searched = self.templates_of(model)
        score = searched.best_of(identity, face.embedding)
        if score is None:
            raise GalleryError(f"verify {identity}: no such identity in the gallery")
        return {"probe": name, "identity": identity, "score": round(score, 6), "threshold": threshold,
                "same": score > threshold, "probe_version": model.json(), "template_version": source.json()}

    # -- migration -----------------------------------------------------------------------------------------
    def needs_migration(self, model: ModelId) -> bool:
        """Whether some face has no template of ``model`` yet, or its template set is not marked ready."""
        with self.engine.connect() as connection:
            row = connection.execute(select(versions).where(versions.c.model_sha256 == model.sha256)).first()
            missing = connection.execute(select(func.count()).select_from(self._missing(model).subquery()))
            return row is None or row.state != "ready" or bool(missing.scalar_one())

    @staticmethod
    def _missing(model: ModelId) -> Any:
        return (select(faces.c.id, faces.c.identity, faces.c.crop_sha256)
                .outerjoin(templates, and_(templates.c.face_id == faces.c.id,
                                           templates.c.model_sha256 == model.sha256))
                .where(templates.c.face_id.is_(None)).order_by(faces.c.id))

    def migrate(self, model: ModelId, embed_crops: Callable[[np.ndarray], np.ndarray], batch: int = 256,
                progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        """Give every face a template of ``model``, embedded from its stored crop; rerun after a crash, it adds
        only what is missing. ``embed_crops``: uint8 [N, S, S, 3] -> L2-normalised float32 [N, D]."""
        with writing(self.engine) as connection:
            # one promotion at a time (the serving lock): another version still building was abandoned (its
            # champion moved on), and would keep enrolment refused
            abandoned = select(versions.c.model_sha256).where(versions.c.state == "building",
                                                               versions.c.model_sha256 != model.sha256)
            connection.execute(delete(templates).where(templates.c.model_sha256.in_(abandoned.scalar_subquery())))
            connection.execute(delete(versions).where(versions.c.model_sha256.in_(abandoned.scalar_subquery())))
            row = connection.execute(select(versions).where(versions.c.model_sha256 == model.sha256)).first()
            if row is None:
                connection.execute(insert(versions).values(model_sha256=model.sha256, model_version=model.version,
                                                           state="building", active=False, updated_at=_now()))
            elif row.state != "building":
                connection.execute(update(versions).where(versions.c.model_sha256 == model.sha256)
                                   .values(state="building", updated_at=_now()))
        missing = self._missing(model)
        with self.engine.connect() as connection:
            total = connection.execute(select(func.count()).select_from(missing.subquery())).scalar_one()
        done = 0
        while True:
            with self.engine.connect() as connection:
                rows = connection.execute(missing.limit(batch)).all()
            if not rows:
                break
            embedded = embed_crops(np.stack([self.crops.get(r.crop_sha256) for r in rows]))
            with writing(self.engine) as connection:
                connection.execute(insert(templates), [
                    {"face_id": r.id, "model_sha256": model.sha256, "model_version": model.version,
                     "identity": r.identity, "embedding": e.astype(np.float32).tobytes()}
                    for r, e in zip(rows, embedded, strict=True)])
            done += len(rows)
            if progress:
                progress(done, total)
        with writing(self.engine) as connection:
            connection.execute(update(versions).where(versions.c.model_sha256 == model.sha256)
                               .values(state="ready", updated_at=_now()))
        return {"model": model.json(), "re_embedded": done}

    def activate(self, model: ModelId) -> dict[str, Any]:
        """New faces enrol with ``model`` from now on (its templates must be ready); versions beyond the
        newest ``keep_versions`` lose their templates (the ones a rollback may still need stay)."""
        with writing(self.engine) as connection:
            row = connection.execute(select(versions).where(versions.c.model_sha256 == model.sha256)).first()
            if row is None or row.state != "ready":
                raise GalleryError(f"activate {model.label}: its templates are not ready (migrate first)")
            connection.execute(update(versions).values(active=versions.c.model_sha256 == model.sha256))
            connection.execute(update(versions).where(versions.c.model_sha256 == model.sha256)
                               .values(updated_at=_now()))
            ordered = connection.execute(select(versions.c.model_sha256).order_by(versions.c.updated_at.desc()))
            retired = list(ordered.scalars())[self.keep_versions:]
            if retired:
                connection.execute(delete(templates).where(templates.c.model_sha256.in_(retired)))
                connection.execute(delete(versions).where(versions.c.model_sha256.in_(retired)))
                connection.execute(delete(compatible).where(compatible.c.template_sha256.in_(retired)
                                                            | compatible.c.probe_sha256.in_(retired)))
        return {"active": model.json(), "retired": retired}
