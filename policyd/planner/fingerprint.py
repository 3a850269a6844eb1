"""The catalog fingerprint a plan carries, so `apply` can refuse a stale plan.

It is a hash of per-table sums that any insert, delete or update of the state a plan
reads moves (counts, id sums, sizes, times, replica states), computed by the database
in one pass per table instead of reading rows into Python. Every sum is an integer
(times are cast to whole seconds), so the sums are exact and *linear*: the sums over
one file's rows before and after an action, subtracted, are exactly what that action
changed. `apply` records that difference with each action in the ledger, and a
resumed plan is accepted when today's sums minus its own actions' differences hash to
the plan's fingerprint: the catalog changed, but only by that plan (spec/rules.md
section 9, invariant 3).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Engine,
    bindparam,
    case,
    cast,
    func,
    literal,
    select,
)
from sqlalchemy.engine import Connection

from policyd.catalog.schema import experiments, files, grants, jobs, notices, replicas

_STATE_CODE = case(
    (replicas.c.state == "verified", 1),
    (replicas.c.state == "present", 2),
    (replicas.c.state == "missing", 3),
    else_=4,
)


def _whole(column: ColumnElement[Any]) -> ColumnElement[Any]:
    return cast(column, BigInteger)


def _sums(*columns: ColumnElement[Any]) -> list[ColumnElement[Any]]:
    return [func.count(), *(func.coalesce(func.sum(c), 0) for c in columns)]


@cache
def _queries(file_scope: bool, experiment_scope: bool) -> tuple[Any, ...]:
    """One query per table, built once per scope (a plan's apply runs them twice per
    action); scoped ones take the `file_id` and `experiment_id` parameters, and a table
    outside the scope is None: its sums do not change."""
    scoped = file_scope or experiment_scope
    file_id, experiment_id = bindparam("file_id"), bindparam("experiment_id")
    out: list[Any] = [
        None
        if scoped
        else select(
            *_sums(
                experiments.c.id,
                _whole(experiments.c.end),
                _whole(experiments.c.pinned_until),
                func.length(experiments.c.station),
            )
        )
    ]
    by_file = [
        (
            select(
                *_sums(
                    files.c.id,
                    files.c.size,
                    _whole(files.c.modified),
                    func.length(files.c.md5),
                    _whole(files.c.expired_at),
                )
            ),
            files.c.id,
        ),
        (
            select(
                *_sums(
                    replicas.c.id * _STATE_CODE,
                    replicas.c.location_id * replicas.c.file_id,
                    _whole(replicas.c.verified_at),
                    func.length(replicas.c.path),
                )
            ),
            replicas.c.file_id,
        ),
        (select(*_sums(func.length(jobs.c.id))), jobs.c.file_id),
    ]
    by_experiment = [
        (select(*_sums(grants.c.id)), grants.c.experiment_id),
        (select(*_sums(_whole(notices.c.sent_at))), notices.c.experiment_id),
    ]
    for query, column in by_file:
        out.append(query if not scoped else query.where(column == file_id) if file_scope else None)
    for query, column in by_experiment:
        if not scoped:
            out.append(query)
        else:
            out.append(query.where(column == experiment_id) if experiment_scope else None)
    return tuple(out)


_WIDTHS = (5, 6, 5, 2, 2, 2)


def aggregates(
    conn: Connection, file_id: int | None = None, experiment_id: int | None = None
) -> list[int]:
    """The sums, whole catalog or one file's and experiment's rows."""
    params = {"file_id": file_id, "experiment_id": experiment_id}
    scoped = file_id is not None or experiment_id is not None
    queries = _queries(file_id is not None, experiment_id is not None)
    if scoped:
        return [int(v) for v in conn.execute(_one_query(queries), params).one()]
    out: list[int] = []
    for query, width in zip(queries, _WIDTHS, strict=True):
        if query is None:
            out += [0] * width
        else:
            out += [int(v) for v in conn.execute(query).one()]
    return out


@cache
def _one_query(queries: tuple[Any, ...]) -> Any:
    """The scoped sums in one round trip: each table's sums as scalar subqueries (the
    scoped tables are small per file, and apply asks twice per action)."""
    columns: list[Any] = []
    for query, width in zip(queries, _WIDTHS, strict=True):
        if query is None:
            columns += [literal(0)] * width
            continue
        sub = query.subquery()
        columns += [select(column).scalar_subquery() for column in sub.c]
    return select(*columns)


def subtract(total: Sequence[int], deltas: Sequence[Sequence[int]]) -> list[int]:
    out = list(total)
    for delta in deltas:
        out = [a - b for a, b in zip(out, delta, strict=True)]
    return out


def fingerprint_of(sums: Sequence[int]) -> str:
    return "sha256:" + hashlib.sha256(repr(tuple(sums)).encode()).hexdigest()


def catalog_fingerprint(engine: Engine) -> str:
    with engine.connect() as conn:
        return fingerprint_of(aggregates(conn))
