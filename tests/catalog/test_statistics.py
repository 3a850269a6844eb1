"""An import leaves PostgreSQL with fresh statistics, so the planner's queries are
planned on the catalog as it is (a server without autovacuum would have none)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.catalog.helpers import SMITH, cli, write_jsonl
from tests.conftest import SITE_CONFIG, truncate_pg


@pytest.mark.pg
def test_import_analyzes_the_catalog_tables(
    tmp_path: Path, pg_database: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    truncate_pg(pg_database)
    (tmp_path / "policyd.yaml").write_text(SITE_CONFIG.format(extra=""))
    monkeypatch.setenv("POLICYD_CATALOG", pg_database)
    monkeypatch.setenv("POLICYD_CONFIG", str(tmp_path / "policyd.yaml"))
    engine = create_engine(pg_database)
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_stat_reset()"))
    source = write_jsonl(tmp_path / "e.jsonl", [SMITH])
    assert cli("catalog", "import", "jsonl", source).exit_code == 0
    with engine.connect() as conn:
        analyzed = {
            name
            for name, when in conn.execute(
                text("SELECT relname, last_analyze FROM pg_stat_user_tables")
            )
            if when is not None
        }
    engine.dispose()
    assert {"experiments", "files", "replicas"} <= analyzed
