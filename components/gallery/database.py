"""The gallery's tables: one schema for the embedded default (SQLite, one file) and a team's PostgreSQL.

SQLAlchemy Core (already installed with MLflow) speaks both, so the gallery's queries are written once; the URL
decides (``sqlite:///gallery/gallery.db``, ``postgresql+psycopg://user@host/db``). docs/gallery.md.

- ``gallery_faces``: one row per enrolled face: identity, the SHA-256 of the photo it came from and of its
  aligned crop (the crop itself is in the crop store: re-embedding never needs the photo).
- ``gallery_templates``: one embedding per face and model version; every row names the identity, the model
  version and its ``model_sha256``. The key (face, model_sha256) makes a re-embedding that is rerun after a
  crash add nothing twice.
- ``gallery_versions``: the model versions the gallery holds templates of: ``building`` while a migration
  fills them, ``ready`` after; ``active`` is the one new faces are enrolled with.
- ``gallery_state``: a generation counter every write moves, so a searcher knows when to reload.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Connection,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    UniqueConstraint,
    create_engine,
    event,
    update,
)
from sqlalchemy.engine import make_url

metadata = MetaData()

faces = Table(
    "gallery_faces", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("identity", String(256), nullable=False, index=True),
    Column("photo_sha256", String(64), nullable=False),
    Column("crop_sha256", String(64), nullable=False),
    Column("enrolled_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("photo_sha256", name="one_identity_per_photo"),
)

templates = Table(
    "gallery_templates", metadata,
    Column("face_id", Integer, ForeignKey("gallery_faces.id", ondelete="CASCADE"), primary_key=True),
    Column("model_sha256", String(64), primary_key=True, index=True),
    Column("model_version", String(64), nullable=False),
    Column("identity", String(256), nullable=False),
    Column("embedding", LargeBinary, nullable=False),  # float32, L2-normalised, native byte order
)

versions = Table(
    "gallery_versions", metadata,
    Column("model_sha256", String(64), primary_key=True),
    Column("model_version", String(64), nullable=False),
    Column("state", String(16), nullable=False),  # building | ready
    Column("active", Boolean, nullable=False, default=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

# probes of ``probe_sha256`` may search the templates of ``template_sha256``: the registry measured the probe's
# version compatible with that one (flows/promotion.bridge), and the team accepts that (gallery.accept_compatible)
compatible = Table(
    "gallery_compatible", metadata,
    Column("probe_sha256", String(64), primary_key=True),
    Column("template_sha256", String(64), primary_key=True),
    Column("verdict", String(256), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

state = Table(
    "gallery_state", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Integer, nullable=False),
)


def open_database(url: str) -> Engine:
    """An engine with the tables in place. A SQLite file's folder is created; SQLite gets foreign keys (the
    cascade from a face to its templates), WAL (identify keeps reading while a migration writes) and a busy
    timeout (a CLI enrol next to the service waits instead of failing), and secure deletion (a removed face's
    bytes are overwritten, not left readable in the file's free pages: docs/data_protection.md)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _pragmas(connection: Any, _record: Any) -> None:
            cursor = connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA secure_delete=ON")
            cursor.close()
    else:
        engine = create_engine(url, pool_pre_ping=True)
    metadata.create_all(engine)
    with engine.begin() as connection:
        if connection.execute(state.select().where(state.c.key == "generation")).first() is None:
            connection.execute(state.insert().values(key="generation", value=0))
    return engine


def scrub(engine: Engine) -> None:
    """After a person is removed, no copy of their rows left in the database's own files: SQLite's write-ahead
    log is written back and emptied (the pages themselves were overwritten: secure_delete); PostgreSQL's tables
    are rewritten (``VACUUM FULL``: dead rows stay in the old pages until then)."""
    if engine.url.get_backend_name() == "sqlite":
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    else:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.exec_driver_sql(f"VACUUM FULL {faces.name}, {templates.name}")


@contextmanager
def writing(engine: Engine) -> Iterator[Connection]:
    """One transaction that also moves the generation counter (searchers reload on the next request)."""
    with engine.begin() as connection:
        yield connection
        connection.execute(update(state).where(state.c.key == "generation").values(value=state.c.value + 1))


def generation(connection: Connection) -> int:
    return int(connection.execute(state.select().where(state.c.key == "generation")).one().value)
