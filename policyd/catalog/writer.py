"""Batched upserts into the catalog, one code path for SQLite and PostgreSQL.

Importers hand over validated rows; the writer groups them and sends one
multi-row INSERT ... ON CONFLICT DO UPDATE per table per batch, so the cost per
record stays flat however large the input is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import Connection, Engine, Insert, Table, func, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite

from policyd.catalog.records import ExperimentRow, FileRow
from policyd.catalog.schema import experiments, files, locations, replicas, stations

BATCH = 2000


def dialect_insert(conn: Connection, table: Table) -> Insert:
    """The dialect's INSERT, which knows ON CONFLICT; SQLite and PostgreSQL spell it alike."""
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(table)


def upsert(
    conn: Connection, table: Table, index: Sequence[str], update: Mapping[str, Any]
) -> Insert:
    """INSERT ... ON CONFLICT (index) DO UPDATE SET update, in the connection's dialect.

    `update` maps a column to the new value; use `excluded(column)` for the incoming one.
    """
    stmt = dialect_insert(conn, table)
    values = {c: (stmt.excluded[c] if v is EXCLUDED else v(stmt)) for c, v in update.items()}
    return stmt.on_conflict_do_update(index_elements=list(index), set_=values)


EXCLUDED = object()


def take_new(*columns: str) -> dict[str, Any]:
    return dict.fromkeys(columns, EXCLUDED)


def replica_params(
    file_id: int, location_id: int, path: str, state: str, at: float
) -> dict[str, Any]:
    return {
        "file_id": file_id,
        "location_id": location_id,
        "path": path,
        "state": state,
        "verified_at": at if state == "verified" else None,
    }


def write_replicas(
    conn: Connection, params: list[dict[str, Any]], refresh: tuple[str, ...] = ()
) -> None:
    """Upsert replicas by (file, location); the operator's word on the state wins.

    `refresh` names further columns the incoming rows carry (a scan's size and mtime).
    """
    unique = {(p["file_id"], p["location_id"]): p for p in params}
    if not unique:
        return
    conn.execute(
        upsert(
            conn,
            replicas,
            ["file_id", "location_id"],
            {
                **take_new("path", "state", *refresh),
                "verified_at": lambda s: func.coalesce(
                    s.excluded.verified_at, replicas.c.verified_at
                ),
            },
        ),
        list(unique.values()),
    )


class CatalogWriter:
    """Holds the id caches an import needs; one instance per import run."""

    def __init__(self, engine: Engine, now: float) -> None:
        self.engine = engine
        self.now = now
        self.experiment_ids: dict[str, int] = {}
        self.experiment_stations: dict[str, str | None] = {}
        self.location_ids: dict[str, int] = {}
        self.counts = {"experiments": 0, "files": 0, "replicas": 0}
        self.refresh_ids()

    def refresh_ids(self) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(experiments.c.name, experiments.c.id, experiments.c.station)
            ).all()
            self.experiment_ids = {name: id_ for name, id_, _ in rows}
            self.experiment_stations = {name: station for name, _, station in rows}
            self.location_ids = dict(
                conn.execute(select(locations.c.name, locations.c.id)).all()
            )

    def write_experiments(self, rows: Iterable[ExperimentRow]) -> None:
        params = {
            r.name: {
                "name": r.name,
                "station": r.station,
                "type": r.type,
                "description": r.description,
                "start": r.start,
                "end": r.end,
                "users": r.users,
                "meta": r.meta,
            }
            for r in rows
        }
        if not params:
            return
        with self.engine.begin() as conn:
            conn.execute(
                upsert(
                    conn,
                    experiments,
                    ["name"],
                    take_new("station", "type", "description", "start", "end", "users", "meta"),
                ),
                list(params.values()),
            )
            new_stations = sorted({p["station"] for p in params.values() if p["station"]})
            if new_stations:
                conn.execute(
                    upsert(conn, stations, ["name"], take_new("name")),
                    [{"name": s} for s in new_stations],
                )
        self.counts["experiments"] += len(params)
        self.refresh_ids()

    def write_files(self, rows: Sequence[FileRow]) -> None:
        """Upsert files, then their replicas; the last record for a path wins."""
        by_key = {(self.experiment_ids[r.experiment], r.path): r for r in rows}
        if not by_key:
            return
        file_params = [
            {
                "experiment_id": exp_id,
                "path": r.path,
                "name": r.name,
                "ext": r.ext,
                "size": r.size,
                "md5": r.md5,
                "created": r.created,
                "modified": r.modified,
                "meta": r.meta,
            }
            for (exp_id, _), r in by_key.items()
        ]
        with self.engine.begin() as conn:
            conn.execute(
                upsert(
                    conn,
                    files,
                    ["experiment_id", "path"],
                    {
                        **take_new("name", "ext", "size", "created", "modified", "meta"),
                        # A record without md5 must not erase a checksum already known.
                        "md5": lambda s: func.coalesce(s.excluded.md5, files.c.md5),
                    },
                ),
                file_params,
            )
            self.counts["files"] += len(file_params)
            with_replicas = [k for k, r in by_key.items() if r.replicas]
            if with_replicas:
                self._write_replicas(conn, by_key, with_replicas)

    def file_ids(self, conn: Connection, keys: list[tuple[int, str]]) -> dict[tuple[int, str], int]:
        """Ids of files by (experiment id, path), one round trip for a whole batch."""
        if not keys:
            return {}
        return {
            (e, p): i
            for e, p, i in conn.execute(
                select(files.c.experiment_id, files.c.path, files.c.id).where(
                    tuple_(files.c.experiment_id, files.c.path).in_(keys)
                )
            )
        }

    def _write_replicas(
        self,
        conn: Connection,
        by_key: dict[tuple[int, str], FileRow],
        keys: list[tuple[int, str]],
    ) -> None:
        ids = self.file_ids(conn, keys)
        params = [
            replica_params(ids[key], self.location_ids[rep.location], rep.path, rep.state, self.now)
            for key in keys
            for rep in by_key[key].replicas
        ]
        write_replicas(conn, params)
        self.counts["replicas"] += len(params)
