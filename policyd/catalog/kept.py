"""A bulk writer's batch on SQLite: the triggers stand aside, the batch recomputes.

SQLite's triggers run per row: for an import that is four more statements per replica
and three quarters more time. A batch drops them inside its own transaction and makes
them again before it commits. It reads, before and after its writes, the usage and
the fingerprint sums of its own files, appends the differences, and writes its files'
masks: a few set-based statements per batch. What the catalog keeps ends the same as
if every trigger had run. PostgreSQL's statement triggers already work per batch and
stay on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    case,
    func,
    insert,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection

from policyd.catalog.schema import (
    SUM_VALUES,
    catalog_sum_changes,
    files,
    replicas,
    usage_changes,
)
from policyd.catalog.sums import TERMS, table_sums

MASKED_IDS = 63
_HELD = ("present", "verified", "corrupt")
#: The tables a batch of files and their replicas writes, by their place in TERMS.
_WRITTEN = {index: name for index, name in enumerate(TERMS) if name in ("files", "replicas")}

Usage = dict[tuple[int, int], tuple[int, int]]
Sums = dict[int, list[int]]


def _listed(ids: list[int]) -> Any:
    return (
        select(literal_column("value"))
        .select_from(func.json_each(orjson.dumps(ids).decode()))
        .scalar_subquery()
    )


Scope = tuple[list[int], int | None]  # files by id, and the files above an id


def _files_in(column: ColumnElement[Any], scope: Scope) -> ColumnElement[bool]:
    ids, above = scope
    return column.in_(_listed(ids)) if above is None else column > above


def _usage(conn: Connection, scope: Scope) -> Usage:
    size = func.coalesce(replicas.c.size, files.c.size, 0)
    # grouped by `location_id + 0`: grouped by the column itself, SQLite walks the
    # (location_id, state) index of every replica to save a sort, and the batch's
    # few files then cost a scan of the whole table
    location = (replicas.c.location_id + 0).label("location_id")
    query = (
        select(location, files.c.experiment_id, func.sum(size), func.count())
        .join(files, files.c.id == replicas.c.file_id)
        .where(_files_in(replicas.c.file_id, scope), replicas.c.state != "missing")
        .group_by(location, files.c.experiment_id)
    )
    return {(loc, exp): (int(b), int(n)) for loc, exp, b, n in conn.execute(query)}


def _sums(conn: Connection, scope: Scope) -> Sums:
    columns = {"files": files.c.id, "replicas": replicas.c.file_id}
    out = {}
    for index, name in _WRITTEN.items():
        query = select(*table_sums(name)).where(_files_in(columns[name], scope))
        out[index] = [int(v) for v in conn.execute(query).one()]
    return out


def _mask(states: tuple[str, ...]) -> ColumnElement[Any]:
    bit = case(
        (
            replicas.c.state.in_(states) & (replicas.c.location_id < MASKED_IDS),
            literal_column("1", BigInteger).op("<<")(replicas.c.location_id),
        ),
        else_=0,
    )
    total = select(func.sum(bit)).where(replicas.c.file_id == files.c.id).scalar_subquery()
    return func.coalesce(total, 0)


def masks(states: list[tuple[int, str]]) -> tuple[int, int]:
    """(verified_on, held_on) of a file whose replicas are `states` (location id,
    state): what a new file's row is written with."""
    verified = held = 0
    for location_id, state in states:
        if location_id < MASKED_IDS:
            bit = 1 << location_id
            verified |= bit if state == "verified" else 0
            held |= bit if state in _HELD else 0
    return verified, held


class Batch:
    """A batch's files: those that existed, by id, read before and after its writes;
    the new ones, whose ids are above the largest before it (SQLite gives a new row
    the largest id plus one, and the batch holds the write lock), read after."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.old: list[int] = []
        self.usage: Usage = {}
        self.sums: Sums = {}
        self.last = conn.execute(select(func.coalesce(func.max(files.c.id), 0))).scalar_one()

    def before(self, ids: list[int]) -> None:
        """`ids`: the batch's files that exist already."""
        self.old = ids
        if ids:
            self.usage = _usage(self.conn, (ids, None))
            self.sums = _sums(self.conn, (ids, None))

    def after(self) -> None:
        conn = self.conn
        new: Scope = ([], self.last)
        usage = _usage(conn, new)
        sums = _sums(conn, new)
        if self.old:
            old: Scope = (self.old, None)
            for key, (b, n) in _usage(conn, old).items():
                b0, n0 = usage.get(key, (0, 0))
                usage[key] = (b0 + b, n0 + n)
            for index, values in _sums(conn, old).items():
                sums[index] = [a + b for a, b in zip(sums[index], values, strict=True)]
            # new rows were written with their masks; the old ones may have changed
            conn.execute(
                update(files)
                .where(files.c.id.in_(_listed(self.old)))
                .values(verified_on=_mask(("verified",)), held_on=_mask(_HELD))
            )
        changes = []
        for key in sorted(set(usage) | set(self.usage)):
            now, then = usage.get(key, (0, 0)), self.usage.get(key, (0, 0))
            if now != then:
                changes.append(
                    {
                        "location_id": key[0],
                        "experiment_id": key[1],
                        "bytes": now[0] - then[0],
                        "replicas": now[1] - then[1],
                    }
                )
        if changes:
            conn.execute(insert(usage_changes), changes)
        for index, now_sums in sums.items():
            then_sums = self.sums.get(index, [0] * len(now_sums))
            difference = [a - b for a, b in zip(now_sums, then_sums, strict=True)]
            if any(difference):
                row = dict(zip(SUM_VALUES, difference, strict=False))
                conn.execute(insert(catalog_sum_changes).values(tbl=index, **row))


@contextmanager
def bulk_batch(conn: Connection) -> Iterator[Batch]:
    """Within the caller's transaction, the triggers on files and replicas dropped for
    the block and made again after it: SQLite's DDL is transactional and the batch
    holds the write lock, so no other connection ever sees the catalog without them.
    The block calls `before` with the ids of the files it will write that exist,
    writes new files with their `masks`, and calls `after` once written."""
    triggers = conn.execute(
        select(literal_column("name"), literal_column("sql"))
        .select_from(text("sqlite_master"))
        .where(
            literal_column("type") == "trigger",
            literal_column("tbl_name").in_(["files", "replicas"]),
        )
        .order_by(literal_column("name"))
    ).all()
    for name, _ in triggers:
        conn.exec_driver_sql(f'DROP TRIGGER "{name}"')
    yield Batch(conn)
    for _, sql in triggers:
        conn.exec_driver_sql(sql)
