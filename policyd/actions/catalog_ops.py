"""The catalog reads and writes the executors make, in the runner's transaction.

Kept together so that every executor records the same facts the same way: a replica
becomes `verified` only with the checksum that matched (spec/rules.md section 9,
invariant 2), a file's unknown md5 is set by the first read (never overwritten), and
a mismatch marks the replica `corrupt`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, select, update
from sqlalchemy.engine import Connection

from policyd.catalog.schema import experiments, files, locations, replicas


@dataclass(frozen=True)
class FileFacts:
    id: int
    experiment_id: int
    experiment: str
    station: str | None
    path: str
    size: int | None
    md5: str | None
    modified: float | None
    pinned_until: float | None
    expired_at: float | None


@dataclass(frozen=True)
class ReplicaFacts:
    location: str
    location_id: int
    path: str
    state: str
    size: int | None
    verified_at: float | None


class NoSuchFile(LookupError):
    """The action's file is no longer in the catalog (deleted since the plan)."""


def find_file(conn: Connection, experiment: str, path: str, *, lock: bool = False) -> FileFacts:
    """The file's catalog row; with `lock`, the row is locked until the transaction ends
    (PostgreSQL: FOR UPDATE, for workers sharing a catalog; a SQLite catalog has one
    apply at a time, whose deletes run one by one)."""
    query = (
        select(
            files.c.id,
            files.c.experiment_id,
            experiments.c.name,
            experiments.c.station,
            files.c.path,
            files.c.size,
            files.c.md5,
            files.c.modified,
            experiments.c.pinned_until,
            files.c.expired_at,
        )
        .join(experiments, experiments.c.id == files.c.experiment_id)
        .where(experiments.c.name == experiment, files.c.path == path)
    )
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update(of=files)
    row = conn.execute(query).first()
    if row is None:
        raise NoSuchFile(f"{experiment}:{path} is no longer in the catalog")
    return FileFacts(*row)


def file_replicas(conn: Connection, file_id: int) -> dict[str, ReplicaFacts]:
    rows = conn.execute(
        select(
            locations.c.name,
            replicas.c.location_id,
            replicas.c.path,
            replicas.c.state,
            replicas.c.size,
            replicas.c.verified_at,
        )
        .join(locations, locations.c.id == replicas.c.location_id)
        .where(replicas.c.file_id == file_id)
    )
    return {r[0]: ReplicaFacts(*r) for r in rows}


def set_md5_if_unknown(conn: Connection, file_id: int, md5: str) -> str:
    """The file's md5 after the first read has had its say (first read wins)."""
    conn.execute(update(files).where(files.c.id == file_id, files.c.md5.is_(None)).values(md5=md5))
    return str(conn.execute(select(files.c.md5).where(files.c.id == file_id)).scalar_one())


def put_replica(
    conn: Connection,
    file_id: int,
    location_id: int,
    path: str,
    state: str,
    *,
    at: float,
    size: int | None = None,
    checksum: str | None = None,
    mtime: float | None = None,
) -> None:
    values: dict[str, Any] = {"path": path, "state": state, "seen_at": at}
    if size is not None:
        values["size"] = size
    if mtime is not None:
        values["mtime"] = mtime
    if checksum is not None:
        values["checksum"] = checksum
    if state == "verified":
        values["verified_at"] = at
    found = conn.execute(
        update(replicas)
        .where(replicas.c.file_id == file_id, replicas.c.location_id == location_id)
        .values(**values)
    ).rowcount
    if not found:
        conn.execute(replicas.insert().values(file_id=file_id, location_id=location_id, **values))


def mark_replica(conn: Connection, file_id: int, location_id: int, state: str, at: float) -> None:
    values: dict[str, Any] = {"state": state, "seen_at": at}
    if state == "verified":
        values["verified_at"] = at
    conn.execute(
        update(replicas)
        .where(and_(replicas.c.file_id == file_id, replicas.c.location_id == location_id))
        .values(**values)
    )


def drop_replica(conn: Connection, file_id: int, location_id: int) -> None:
    conn.execute(
        delete(replicas).where(replicas.c.file_id == file_id, replicas.c.location_id == location_id)
    )


def location_ids(conn: Connection) -> dict[str, int]:
    return {name: id_ for id_, name in conn.execute(select(locations.c.id, locations.c.name))}
