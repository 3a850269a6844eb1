"""Opening a catalog: engine settings per dialect and the schema upgrade on start.

Every command opens the catalog through `open_catalog`, so an older catalog is
migrated to the current schema before anything reads it.
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError

from policyd.catalog.json_columns import load_json
from policyd.catalog.sqlite_functions import prepare_reader

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).with_name("migrations")


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(_alembic_config()).get_current_head()
    assert head is not None, "the package ships at least one migration"
    return head


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _sqlite_pragmas(dbapi_conn: sqlite3.Connection, _record: object) -> None:
    # WAL lets `plan` read while `apply` writes; NORMAL sync is durable in WAL mode
    # against process crashes, which is what the ledger's resume logic assumes.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()
    prepare_reader(dbapi_conn)


class CatalogUnavailable(RuntimeError):
    """The catalog cannot be opened as asked; the message says why and what to do."""


BACKENDS = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg2"}


def catalog_url(url: str) -> URL:
    """Plain `postgresql://` means psycopg2 here (SQLAlchemy 2.1 would pick psycopg 3,
    which policyd does not ship); other databases are not supported."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise CatalogUnavailable(
            f"{url!r} is not a database URL: write sqlite:///PATH or postgresql://USER@HOST/DB"
        ) from None
    backend = parsed.get_backend_name()
    if backend not in BACKENDS:
        raise CatalogUnavailable(
            f"catalog {parsed.render_as_string()}: policyd keeps its catalog in SQLite or "
            "PostgreSQL (sqlite:///PATH, postgresql://USER@HOST/DB)"
        )
    if backend == "postgresql" and parsed.get_driver_name() not in ("psycopg2",):
        parsed = parsed.set(drivername="postgresql+psycopg2")
    return parsed


def shown(url: str | URL) -> str:
    """A catalog URL fit for messages: its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return str(url)


def create_catalog_engine(url: str, create: bool = True) -> Engine:
    """`create=False` refuses a SQLite file that does not exist, so a mistyped path
    is an error rather than a new, empty catalog."""
    parsed = catalog_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not Path(database).exists():
            if not create:
                raise CatalogUnavailable(
                    f"there is no catalog at {database}: check POLICYD_CATALOG or the "
                    "config's `catalog:`, or create one with `policyd init` or an import"
                )
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise CatalogUnavailable(
                    f"cannot create the catalog at {database}: {exc.strerror}"
                ) from None
        engine = create_engine(parsed, json_deserializer=load_json)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(parsed, pool_pre_ping=True, json_deserializer=load_json)


def upgrade(engine: Engine) -> bool:
    """Bring the schema to head; returns whether anything was migrated."""
    head = head_revision()
    with engine.begin() as conn:
        current = current_revision(conn)
        if current == head:
            return False
        known = {
            s.revision for s in ScriptDirectory.from_config(_alembic_config()).walk_revisions()
        }
        if current is not None and current not in known:
            raise CatalogUnavailable(
                f"the catalog at {shown(engine.url)} has schema revision {current}, which this "
                f"policyd does not know (it knows up to {head}): it was written by a newer "
                "policyd; upgrade policyd to use it"
            )
        log.info("upgrading catalog schema from %s to %s", current or "empty", head)
        cfg = _alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return True


def open_catalog(url: str, create: bool = True) -> Engine:
    engine = create_catalog_engine(url, create)
    upgrade(engine)
    return engine
