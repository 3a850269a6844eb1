"""A bulk writer's batch on SQLite: the triggers stand aside, the batch recomputes.

SQLite's triggers run per row: for an import that is four more statements per replica
and three quarters more time. Inside a transaction that holds the row of
`catalog_bulk` they do nothing (the row never commits, so no other writer sees it);
the batch instead reads, before and after its writes, the usage and the fingerprint
sums of its own files, appends the differences, and sets its files' masks, a few
set-based statements per batch. What the catalog keeps ends the same as if every
trigger had run. PostgreSQL's statement triggers already work per batch and stay on.
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
    delete,
    func,
    insert,
    literal_column,
    select,
    update,
)
from sqlalchemy.engine import Connection

from policyd.catalog.schema import (
    SUM_VALUES,
    catalog_bulk,
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


def _usage(conn: Connection, ids: list[int]) -> Usage:
    size = func.coalesce(replicas.c.size, files.c.size, 0)
    query = (
        select(replicas.c.location_id, files.c.experiment_id, func.sum(size), func.count())
        .join(files, files.c.id == replicas.c.file_id)
        .where(replicas.c.file_id.in_(_listed(ids)), replicas.c.state != "missing")
        .group_by(replicas.c.location_id, files.c.experiment_id)
    )
    return {(loc, exp): (int(b), int(n)) for loc, exp, b, n in conn.execute(query)}


def _sums(conn: Connection, ids: list[int]) -> Sums:
    scope = {"files": files.c.id, "replicas": replicas.c.file_id}
    out = {}
    for index, name in _WRITTEN.items():
        query = select(*table_sums(name)).where(scope[name].in_(_listed(ids)))
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


class Batch:
    """The files a batch touches, before and after its writes."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.usage: Usage = {}
        self.sums: Sums = {}

    def before(self, ids: list[int]) -> None:
        self.usage = _usage(self.conn, ids)
        self.sums = _sums(self.conn, ids)

    def after(self, ids: list[int]) -> None:
        conn = self.conn
        usage = _usage(conn, ids)
        changes = []
        for key in sorted(set(usage) | set(self.usage)):
            bytes_now, count_now = usage.get(key, (0, 0))
            bytes_then, count_then = self.usage.get(key, (0, 0))
            if (bytes_now, count_now) != (bytes_then, count_then):
                changes.append(
                    {
                        "location_id": key[0],
                        "experiment_id": key[1],
                        "bytes": bytes_now - bytes_then,
                        "replicas": count_now - count_then,
                    }
                )
        if changes:
            conn.execute(insert(usage_changes), changes)
        for index, now in _sums(conn, ids).items():
            difference = [
                a - b for a, b in zip(now, self.sums.get(index, [0] * len(now)), strict=True)
            ]
            if any(difference):
                row = dict(zip(SUM_VALUES, difference, strict=False))
                conn.execute(insert(catalog_sum_changes).values(tbl=index, **row))
        conn.execute(
            update(files)
            .where(files.c.id.in_(_listed(ids)))
            .values(verified_on=_mask(("verified",)), held_on=_mask(_HELD))
        )


@contextmanager
def bulk_batch(conn: Connection) -> Iterator[Batch]:
    """Within the caller's transaction: the triggers off for the block, which calls
    `before` with the ids of the files it will write that exist and `after` with all
    of them once written."""
    conn.execute(insert(catalog_bulk).values(id=1))
    yield Batch(conn)
    conn.execute(delete(catalog_bulk))
