"""Opening a catalog: engine settings per dialect and the schema upgrade on start.

Every command opens the catalog through `open_catalog`, so an older catalog is
migrated to the current schema before anything reads it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.engine import Connection

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


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    # WAL lets `plan` read while `apply` writes; NORMAL sync is durable in WAL mode
    # against process crashes, which is what the ledger's resume logic assumes.
    cur = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def create_catalog_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(parsed)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(parsed, pool_pre_ping=True)


def upgrade(engine: Engine) -> bool:
    """Bring the schema to head; returns whether anything was migrated."""
    head = head_revision()
    with engine.begin() as conn:
        current = current_revision(conn)
        if current == head:
            return False
        log.info("upgrading catalog schema from %s to %s", current or "empty", head)
        cfg = _alembic_config()
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return True


def open_catalog(url: str) -> Engine:
    engine = create_catalog_engine(url)
    upgrade(engine)
    return engine
