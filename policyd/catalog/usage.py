"""The space each location holds per experiment, as the triggers of migration 0004 keep it.

Writers append changes; `fold_usage` moves them into the totals so that readers, who
sum both, read few rows. A fold is an optimization, never a correction: the sum of
totals and pending changes is the same before and after it.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, delete, func, select, union_all
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from policyd.catalog.schema import usage_changes, usage_totals

_COLUMNS = ("location_id", "experiment_id", "bytes", "replicas")


def usage_sums(conn: Connection) -> list[tuple[int, int, int, int]]:
    """(location id, experiment id, bytes, replicas) of every replica not missing."""
    both = union_all(
        select(*(usage_totals.c[c] for c in _COLUMNS)),
        select(*(usage_changes.c[c] for c in _COLUMNS)),
    ).subquery()
    query = (
        select(
            both.c.location_id,
            both.c.experiment_id,
            func.sum(both.c.bytes),
            func.sum(both.c.replicas),
        )
        .group_by(both.c.location_id, both.c.experiment_id)
        .having(func.sum(both.c.replicas) != 0)
    )
    return [(loc, exp, int(b), int(n)) for loc, exp, b, n in conn.execute(query)]


def fold_usage(engine: Engine) -> None:
    """Move the pending changes into the totals, in one transaction."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            _fold_postgresql(conn)
        else:
            _fold_sqlite(conn)


def _fold_sqlite(conn: Connection) -> None:
    # The upsert is the transaction's first statement, so it takes the write lock
    # before reading: no writer can add a change between it and the delete.
    pending = select(
        usage_changes.c.location_id,
        usage_changes.c.experiment_id,
        func.sum(usage_changes.c.bytes).label("bytes"),
        func.sum(usage_changes.c.replicas).label("replicas"),
    ).group_by(usage_changes.c.location_id, usage_changes.c.experiment_id)
    conn.execute(_added(sqlite.insert(usage_totals).from_select(list(_COLUMNS), pending)))
    conn.execute(delete(usage_changes))


def _fold_postgresql(conn: Connection) -> None:
    # The changes a concurrent fold deletes first are locked, then skipped here: each
    # change is counted by exactly one fold.
    moved = delete(usage_changes).returning(*(usage_changes.c[c] for c in _COLUMNS)).cte("moved")
    pending = select(
        moved.c.location_id,
        moved.c.experiment_id,
        func.sum(moved.c.bytes),
        func.sum(moved.c.replicas),
    ).group_by(moved.c.location_id, moved.c.experiment_id)
    insert = postgresql.insert(usage_totals).from_select(list(_COLUMNS), pending)
    conn.execute(_added(insert).add_cte(moved))


def _added(insert: Any) -> Any:
    """The upsert that adds the folded changes to their totals."""
    return insert.on_conflict_do_update(
        index_elements=["location_id", "experiment_id"],
        set_={
            "bytes": usage_totals.c.bytes + insert.excluded.bytes,
            "replicas": usage_totals.c.replicas + insert.excluded.replicas,
        },
    )
