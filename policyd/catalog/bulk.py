"""The import hot path: one compiled statement, many rows, through the driver's own batching.

SQLAlchemy builds and compiles every statement (once per import); the rows then go
straight to the DBAPI (`executemany` on sqlite3, `execute_batch` on psycopg2), which
skips SQLAlchemy's per-row parameter processing. That per-row work was three
quarters of an import's time; JSON columns are serialised here with orjson instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from psycopg2.extras import execute_batch
from sqlalchemy import JSON, Connection, Executable, Table, bindparam, select

from policyd.catalog.schema import files

PG_PAGE = 1000
SQLITE_IN_CHUNK = 900


def _json_columns(table: Table) -> frozenset[str]:
    return frozenset(c.name for c in table.columns if isinstance(c.type, JSON))


class Bulk:
    """Runs pre-compiled statements for lists of row dicts on one connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.postgres = conn.dialect.name == "postgresql"
        # The statement is kept in the value so its id() cannot be reused by another one.
        self._compiled: dict[tuple[int, tuple[str, ...]], tuple[Executable, str, tuple[str, ...]]]
        self._compiled = {}

    def _compile(self, stmt: Executable, keys: tuple[str, ...]) -> tuple[str, tuple[str, ...]]:
        cache_key = (id(stmt), keys)
        if cache_key not in self._compiled:
            compiled = stmt.compile(dialect=self.conn.dialect, column_keys=list(keys))
            positions = tuple(compiled.positiontup or ())
            self._compiled[cache_key] = (stmt, compiled.string, positions)
        _, sql, positions = self._compiled[cache_key]
        return sql, positions

    def execute(self, stmt: Executable, table: Table, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        sql, positions = self._compile(stmt, tuple(rows[0]))
        json_cols = _json_columns(table)
        cursor = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if self.postgres:
                params: list[Any] = [
                    {k: (_dump(v) if k in json_cols else v) for k, v in row.items()} for row in rows
                ]
                execute_batch(cursor, sql, params, page_size=PG_PAGE)
            else:
                params = [
                    tuple(_dump(row[k]) if k in json_cols else row[k] for k in positions)
                    for row in rows
                ]
                cursor.executemany(sql, params)
        finally:
            cursor.close()

    def file_ids(self, experiment_id: int, paths: Sequence[str]) -> dict[str, int]:
        """Ids of one experiment's files by path, in as few round trips as the driver allows."""
        stmt = select(files.c.path, files.c.id).where(
            files.c.experiment_id == bindparam("e"),
            files.c.path.in_(bindparam("p", expanding=True)),
        )
        found: dict[str, int] = {}
        step = len(paths) if self.postgres else SQLITE_IN_CHUNK
        for start in range(0, len(paths), step):
            chunk = list(paths[start : start + step])
            found.update(self.conn.execute(stmt, {"e": experiment_id, "p": chunk}).all())
        return found


def _dump(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()
