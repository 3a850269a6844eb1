"""The planner cases' catalog: as tests/conftest.py's, made empty more quickly.

A TRUNCATE of every table takes about half a second on PostgreSQL, and migrating a
new SQLite file a fifth of one; over a hundred cases that is most of the run. The
cases' catalogs are a few rows, so deleting them and restarting the id sequences
leaves the same empty PostgreSQL catalog in a few ms, and each SQLite case starts from
a copy of one catalog migrated once per session.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from policyd.catalog.db import open_catalog
from policyd.catalog.schema import DERIVED_TABLES, SPEC_TABLES, metadata

KEPT = {*DERIVED_TABLES, *SPEC_TABLES}


def empty_pg(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        data = [t for t in reversed(metadata.sorted_tables) if t.name not in KEPT]
        derived = [metadata.tables[name] for name in DERIVED_TABLES]
        for table in data + derived:
            conn.execute(table.delete())
            for column in table.primary_key.columns:
                if column.autoincrement is True or (
                    column.autoincrement == "auto" and len(table.primary_key.columns) == 1
                ):
                    conn.execute(
                        text(
                            "SELECT setval(pg_get_serial_sequence(:table, :column), 1, false) "
                            "WHERE pg_get_serial_sequence(:table, :column) IS NOT NULL"
                        ),
                        {"table": table.name, "column": column.name},
                    )
    engine.dispose()


@pytest.fixture(scope="session")
def sqlite_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated SQLite catalog to copy."""
    path = tmp_path_factory.mktemp("catalog") / "catalog.db"
    open_catalog(f"sqlite:///{path}").dispose()
    return path


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The same case runs against SQLite and PostgreSQL, each from an empty catalog."""
    if request.param == "sqlite":
        path = tmp_path / "catalog.db"
        shutil.copyfile(request.getfixturevalue("sqlite_catalog"), path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_database")
    empty_pg(url)
    return url
