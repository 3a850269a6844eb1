"""The catalog fingerprint a plan carries, so `apply` can refuse a stale plan.

It is a hash of per-table aggregates that any insert, delete or update of the state a
plan reads would move (counts, id sums, sizes, times, replica states), computed by the
database in one pass per table instead of reading rows into Python.
"""

from __future__ import annotations

import hashlib

from sqlalchemy import Engine, case, func, select

from policyd.catalog.schema import experiments, files, grants, jobs, notices, replicas

_STATE_CODE = case(
    (replicas.c.state == "verified", 1),
    (replicas.c.state == "present", 2),
    (replicas.c.state == "missing", 3),
    else_=4,
)


def _aggregates() -> list:  # type: ignore[type-arg]
    total = func.coalesce
    return [
        select(
            func.count(),
            total(func.sum(experiments.c.id), 0),
            total(func.sum(experiments.c.end), 0),
            total(func.sum(experiments.c.pinned_until), 0),
            total(func.sum(func.length(experiments.c.station)), 0),
        ),
        select(
            func.count(),
            total(func.sum(files.c.id), 0),
            total(func.sum(files.c.size), 0),
            total(func.sum(files.c.modified), 0),
            total(func.sum(func.length(files.c.md5)), 0),
            total(func.sum(files.c.expired_at), 0),
        ),
        select(
            func.count(),
            total(func.sum(replicas.c.id * _STATE_CODE), 0),
            total(func.sum(replicas.c.location_id * replicas.c.file_id), 0),
            total(func.sum(replicas.c.verified_at), 0),
            total(func.sum(func.length(replicas.c.path)), 0),
        ),
        select(func.count(), total(func.sum(grants.c.id), 0)),
        select(func.count(), total(func.sum(func.length(jobs.c.id)), 0)),
        select(func.count(), total(func.sum(notices.c.sent_at), 0)),
    ]


def catalog_fingerprint(engine: Engine) -> str:
    digest = hashlib.sha256()
    with engine.connect() as conn:
        for query in _aggregates():
            row = conn.execute(query).one()
            digest.update(repr(tuple(float(v) for v in row)).encode())
    return "sha256:" + digest.hexdigest()
