"""The catalog fingerprint a plan carries, so `apply` can refuse a stale plan.

It is a hash of per-table sums that any insert, delete or update of the state a plan
reads moves (counts, id sums, sizes, times, replica states), which the catalog's
triggers keep (policyd/catalog/sums.py) so that reading them costs a few rows. Every
sum is an integer (times are cast to whole seconds), so the sums are exact and
*linear*: the sums over
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

from sqlalchemy import Engine, bindparam, literal, select
from sqlalchemy.engine import Connection

from policyd.catalog.schema import files, grants, jobs, notices, replicas
from policyd.catalog.sums import TERMS, WIDTHS, catalog_sums_now, table_sums

#: The column each scoped table's rows are narrowed by: a file's rows, an experiment's.
_SCOPE = {
    "files": ("file", files.c.id),
    "replicas": ("file", replicas.c.file_id),
    "jobs": ("file", jobs.c.file_id),
    "grants": ("experiment", grants.c.experiment_id),
    "notices": ("experiment", notices.c.experiment_id),
}


@cache
def _queries(file_scope: bool, experiment_scope: bool) -> tuple[Any, ...]:
    """One query per table (policyd.catalog.sums.TERMS), built once per scope (a plan's
    apply runs them twice per action); scoped ones take the `file_id` and
    `experiment_id` parameters, and a table outside the scope is None: its sums do not
    change."""
    params = {"file": bindparam("file_id"), "experiment": bindparam("experiment_id")}
    wanted = {"file": file_scope, "experiment": experiment_scope}
    out: list[Any] = []
    for name in TERMS:
        scope = _SCOPE.get(name)
        if scope is None or not wanted[scope[0]]:
            out.append(None)
            continue
        out.append(select(*table_sums(name)).where(scope[1] == params[scope[0]]))
    return tuple(out)


def aggregates(
    conn: Connection, file_id: int | None = None, experiment_id: int | None = None
) -> list[int]:
    """The sums: the whole catalog's (as its triggers keep them), or one file's and
    experiment's rows (scanned)."""
    if file_id is None and experiment_id is None:
        return catalog_sums_now(conn)
    params = {"file_id": file_id, "experiment_id": experiment_id}
    queries = _queries(file_id is not None, experiment_id is not None)
    return [int(v) for v in conn.execute(_one_query(queries), params).one()]


@cache
def _one_query(queries: tuple[Any, ...]) -> Any:
    """The scoped sums in one round trip: each table's sums as scalar subqueries (the
    scoped tables are small per file, and apply asks twice per action)."""
    columns: list[Any] = []
    for query, width in zip(queries, WIDTHS, strict=True):
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
