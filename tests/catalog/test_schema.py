"""The schema: created by the first migration, upgraded on open, the same on both databases."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect, text

from policyd.catalog.db import current_revision, head_revision, open_catalog, upgrade
from policyd.catalog.schema import metadata


def test_first_migration_creates_every_table_and_the_planner_indexes(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    insp = inspect(engine)
    assert set(metadata.tables) <= set(insp.get_table_names())
    replica_indexes = {tuple(ix["column_names"]) for ix in insp.get_indexes("replicas")}
    replica_uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("replicas")}
    assert ("location_id", "state") in replica_indexes
    assert ("file_id", "location_id") in replica_uniques
    file_uniques = {tuple(u["column_names"]) for u in insp.get_unique_constraints("files")}
    assert ("experiment_id", "path") in file_uniques
    assert ("modified",) in {tuple(ix["column_names"]) for ix in insp.get_indexes("files")}
    with engine.connect() as conn:
        assert current_revision(conn) == head_revision()
    assert upgrade(engine) is False  # already at head: nothing to do
    engine.dispose()


def test_an_empty_or_older_catalog_is_upgraded_when_a_command_opens_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    raw = create_engine(url)
    with raw.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
    raw.dispose()
    engine = open_catalog(url)
    assert "files" in inspect(engine).get_table_names()
    engine.dispose()


def test_sqlite_catalog_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_postgres_stores_metadata_as_jsonb(catalog_url: str) -> None:
    engine = open_catalog(catalog_url)
    columns = {c["name"]: c["type"] for c in inspect(engine).get_columns("files")}
    expected = "JSONB" if engine.dialect.name == "postgresql" else "JSON"
    assert type(columns["meta"]).__name__ == expected
    engine.dispose()
