"""The import hot path: one compiled statement, many rows, through the driver's own batching.

SQLAlchemy builds and compiles every statement (once per import); the rows, plain
tuples in a fixed column order, then go straight to the DBAPI (`executemany` on
sqlite3, `execute_batch` on psycopg2). That skips SQLAlchemy's per-row parameter
processing, which was three quarters of an import's time. Callers hand JSON columns
over already serialised.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any

from psycopg2.extras import execute_batch
from sqlalchemy import Connection, Executable, bindparam, select
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

from policyd.catalog.schema import files

PG_PAGE = 1000
SQLITE_IN_CHUNK = 900

# psycopg2 takes positional `%s` parameters as well as named ones; positional lets the
# same row tuples serve both databases.
_PG_POSITIONAL = PGDialect_psycopg2(paramstyle="format")


class Bulk:
    """Runs pre-compiled statements for lists of row tuples on one connection."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.postgres = conn.dialect.name == "postgresql"
        # The statement is kept in the value so its id() cannot be reused by another one.
        self._compiled: dict[tuple[int, tuple[str, ...]], tuple[Executable, str, Any]] = {}

    def _compile(self, stmt: Executable, columns: tuple[str, ...]) -> tuple[str, Any]:
        key = (id(stmt), columns)
        if key not in self._compiled:
            dialect = _PG_POSITIONAL if self.postgres else self.conn.dialect
            compiled = stmt.compile(dialect=dialect, column_keys=list(columns))
            order = [columns.index(name) for name in compiled.positiontup or ()]
            reorder = None if order == list(range(len(columns))) else itemgetter(*order)
            self._compiled[key] = (stmt, compiled.string, reorder)
        _, sql, reorder = self._compiled[key]
        return sql, reorder

    def execute(
        self, stmt: Executable, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
    ) -> None:
        """`rows` hold values in `columns` order."""
        if not rows:
            return
        sql, reorder = self._compile(stmt, columns)
        params = rows if reorder is None else [reorder(row) for row in rows]
        cursor = self.conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if self.postgres:
                execute_batch(cursor, sql, params, page_size=PG_PAGE)
            else:
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
