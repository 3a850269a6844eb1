"""Batched upserts into the catalog.

Importers hand over validated rows; the writer groups them into batches and upserts
each batch with INSERT ... ON CONFLICT DO UPDATE, built with SQLAlchemy Core: on
SQLite one compiled statement run by the driver's executemany (see catalog.bulk), on
PostgreSQL one statement per batch reading whole columns from arrays (`unnest`), so
the cost per record stays flat however large the input is. The update rules (what a
record that leaves a key out keeps) are the same on both.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.errors
from sqlalchemy import (
    BigInteger,
    Connection,
    Double,
    Engine,
    Insert,
    Integer,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    cast,
    column,
    func,
    literal_column,
    null,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.exc import DBAPIError

from policyd.catalog.bulk import Bulk
from policyd.catalog.kept import bulk_batch, masks
from policyd.catalog.records import ExperimentRow, FileRow
from policyd.catalog.schema import experiments, files, locations, replicas, stations

BATCH = 5000


def dialect_insert(conn: Connection, table: Table) -> Insert:
    """The dialect's INSERT, which knows ON CONFLICT; SQLite and PostgreSQL spell it alike."""
    module = postgresql if conn.dialect.name == "postgresql" else sqlite
    return module.insert(table)


def upsert(
    conn: Connection,
    table: Table,
    index: Sequence[str],
    take: Sequence[str] = (),
    keep: Sequence[str] = (),
    computed: Callable[[Insert], dict[str, Any]] | None = None,
) -> Insert:
    """INSERT ... ON CONFLICT (index) DO UPDATE, in the connection's dialect.

    `take` columns get the incoming value; `keep` columns get it only when it is not
    null, so a record that leaves a key out does not erase what the catalog holds;
    `computed` gives further columns' expressions from the statement.
    """
    stmt = dialect_insert(conn, table)
    values: dict[str, Any] = {c: stmt.excluded[c] for c in take}
    values.update({c: func.coalesce(stmt.excluded[c], table.c[c]) for c in keep})
    if computed is not None:
        values.update(computed(stmt))
    return stmt.on_conflict_do_update(index_elements=list(index), set_=values)


def replica_state(stmt: Insert) -> dict[str, Any]:
    """An import's `present` does not undo a verification of the same replica: a listing
    is not a check. Any other incoming state wins, and only `verified` keeps a time."""
    new = stmt.excluded
    # Constants as SQL literals: the bulk path binds row values only.
    present, verified = literal_column("'present'"), literal_column("'verified'")
    still_verified = and_(
        new.state == present, replicas.c.state == verified, replicas.c.path == new.path
    )
    return {
        "path": new.path,
        "state": case((still_verified, replicas.c.state), else_=new.state),
        "verified_at": case(
            (new.state == verified, new.verified_at),
            (still_verified, replicas.c.verified_at),
            else_=null(),
        ),
    }


FILE_COLUMNS = (
    "experiment_id",
    "path",
    "name",
    "ext",
    "size",
    "md5",
    "created",
    "modified",
    "meta",
)
REPLICA_COLUMNS = ("file_id", "location_id", "path", "state", "verified_at")
# A new file's replica masks, written with it by SQLite imports (policyd.catalog.kept);
# an upsert of a file that exists leaves its masks to be recomputed.
MASK_COLUMNS = ("verified_on", "held_on")


def replica_values(
    file_id: int, location_id: int, path: str, state: str, at: float
) -> tuple[Any, ...]:
    """A replica row in REPLICA_COLUMNS order; `verified` is stamped with the time."""
    return (file_id, location_id, path, state, at if state == "verified" else None)


def replica_upsert(conn: Connection, refresh: tuple[str, ...] = ()) -> Insert:
    """Upsert replicas by (file, location). `refresh` names further columns the
    incoming rows carry (a scan's size and mtime)."""
    return upsert(conn, replicas, ["file_id", "location_id"], take=refresh, computed=replica_state)


# Replicas of an import name their file by (experiment, path); the database finds its id
# in the same statement, saving a round trip per batch. Values in the order they render.
REPLICA_BY_PATH_COLUMNS = ("location_id", "rpath", "state", "verified_at", "experiment_id", "path")


def replica_upsert_by_path(conn: Connection) -> Insert:
    """INSERT INTO replicas SELECT files.id, ... WHERE the file's (experiment, path)."""
    source = select(
        files.c.id,
        bindparam("location_id", type_=Integer),
        bindparam("rpath", type_=Text),
        bindparam("state", type_=String),
        bindparam("verified_at", type_=Double),
    ).where(
        files.c.experiment_id == bindparam("experiment_id"),
        files.c.path == bindparam("path"),
    )
    stmt = dialect_insert(conn, replicas).from_select(REPLICA_COLUMNS, source)
    return stmt.on_conflict_do_update(
        index_elements=["file_id", "location_id"], set_=replica_state(stmt)
    )


def execute_arrays(
    conn: Connection, stmt: Insert, columns: Sequence[str], rows: list[tuple[Any, ...]]
) -> None:
    if rows:
        conn.execute(stmt, dict(zip(columns, map(list, zip(*rows, strict=True)), strict=True)))


def unnest(columns: Sequence[tuple[str, Any]]) -> Any:
    """`unnest(:a::T[], :b::U[], ...) AS v(a, b, ...)`: on PostgreSQL a whole batch goes
    as one array per column in one statement, where one statement per row (what
    executemany amounts to over the network) would be ten times slower."""
    arrays = [cast(bindparam(name), ARRAY(type_)) for name, type_ in columns]
    names = [column(name, type_) for name, type_ in columns]
    return func.unnest(*arrays).table_valued(*names).render_derived(name="v")


FILE_TYPES = (Integer, Text, Text, Text, BigInteger, Text, Double, Double, JSONB)
REPLICA_BY_PATH_TYPES = (Integer, Text, Text, Double, Integer, Text)


def pg_file_upsert() -> Insert:
    v = unnest(list(zip(FILE_COLUMNS, FILE_TYPES, strict=True)))
    stmt = postgresql.insert(files).from_select(FILE_COLUMNS, select(*v.c))
    return stmt.on_conflict_do_update(
        index_elements=["experiment_id", "path"], set_=file_update(stmt)
    )


def pg_replica_upsert_by_path() -> Insert:
    v = unnest(list(zip(REPLICA_BY_PATH_COLUMNS, REPLICA_BY_PATH_TYPES, strict=True)))
    source = select(files.c.id, v.c.location_id, v.c.rpath, v.c.state, v.c.verified_at).join_from(
        v, files, and_(files.c.experiment_id == v.c.experiment_id, files.c.path == v.c.path)
    )
    stmt = postgresql.insert(replicas).from_select(REPLICA_COLUMNS, source)
    return stmt.on_conflict_do_update(
        index_elements=["file_id", "location_id"], set_=replica_state(stmt)
    )


def file_update(stmt: Insert) -> dict[str, Any]:
    """Size is the record's; the rest only when the record gives it (see `upsert`)."""
    new = stmt.excluded
    return {
        "size": new.size,
        **{c: func.coalesce(new[c], files.c[c]) for c in ("md5", "created", "modified", "meta")},
    }


def file_upsert(conn: Connection) -> Insert:
    stmt = dialect_insert(conn, files)
    return stmt.on_conflict_do_update(
        index_elements=["experiment_id", "path"], set_=file_update(stmt)
    )


def file_ids(bulk: Bulk, keys: Iterable[tuple[int, str]]) -> dict[tuple[int, str], int]:
    """Ids of files by (experiment id, path), a round trip per experiment and chunk."""
    by_experiment: dict[int, list[str]] = defaultdict(list)
    for exp_id, path in keys:
        by_experiment[exp_id].append(path)
    found = {}
    for exp_id, paths in by_experiment.items():
        for path, id_ in bulk.file_ids(exp_id, paths).items():
            found[(exp_id, path)] = id_
    return found


@dataclass(frozen=True)
class FileBatch:
    """Rows ready for the database: FILE_COLUMNS and REPLICA_BY_PATH_COLUMNS tuples,
    the input line of each file row, for each replica row the index of its file, and
    each file row's MASK_COLUMNS as its replicas make them (what SQLite writes for a
    new file)."""

    files: list[tuple[Any, ...]]
    replicas: list[tuple[Any, ...]]
    lines: list[int]
    owners: list[int]
    masks: list[tuple[int, int]]


# (input line, why the database refused it, how many replica rows went with it)
Failure = tuple[int, str, int]

# What a single bad value makes the database (or its driver) raise, as opposed to a
# database that is down or a schema that is wrong, which stop the import.
ROW_ERRORS = (
    OverflowError,
    ValueError,
    sqlite3.IntegrityError,
    sqlite3.DataError,
    sqlite3.InterfaceError,
    psycopg2.DataError,
    psycopg2.IntegrityError,
    psycopg2.errors.ProgramLimitExceeded,
)


def row_error(exc: BaseException) -> bool:
    """Whether `exc` is about the values written (retry the batch a row at a time)."""
    if isinstance(exc, DBAPIError):
        return isinstance(exc.orig, ROW_ERRORS)
    return isinstance(exc, ROW_ERRORS)


class FileStore:
    """Writes file batches; its statements are built once, so the bulk path compiles
    each once per import however many batches follow. A batch the database refuses
    is written again a record at a time, so one bad record costs only itself."""

    def __init__(
        self, engine: Engine, on_failures: Callable[[list[Failure]], None] | None = None
    ) -> None:
        self.engine = engine
        self.on_failures = on_failures
        self.postgres = engine.dialect.name == "postgresql"
        with engine.connect() as conn:
            if self.postgres:
                self.file_stmt = pg_file_upsert()
                self.replica_stmt = pg_replica_upsert_by_path()
            else:
                self.file_stmt = file_upsert(conn)
                self.replica_stmt = replica_upsert_by_path(conn)

    def write(
        self,
        files_: list[tuple[Any, ...]],
        replicas_: list[tuple[Any, ...]],
        masks_: list[tuple[int, int]],
    ) -> None:
        """Files first, so each replica finds its file's id in the same transaction."""
        with self.engine.begin() as conn:
            if self.postgres:
                # A file's record lists a location once; keep the last if it does not.
                replicas_ = list({(r[4], r[5], r[0]): r for r in replicas_}.values())
                execute_arrays(conn, self.file_stmt, FILE_COLUMNS, files_)
                execute_arrays(conn, self.replica_stmt, REPLICA_BY_PATH_COLUMNS, replicas_)
            else:
                bulk = Bulk(conn)
                with bulk_batch(conn) as kept:
                    keys = [(row[0], row[1]) for row in files_]
                    kept.before(list(file_ids(bulk, keys).values()))
                    rows = [row + mask for row, mask in zip(files_, masks_, strict=True)]
                    bulk.execute(self.file_stmt, FILE_COLUMNS + MASK_COLUMNS, rows)
                    bulk.execute(self.replica_stmt, REPLICA_BY_PATH_COLUMNS, replicas_)
                    kept.after()

    def store(self, batch: FileBatch) -> None:
        try:
            self.write(batch.files, batch.replicas, batch.masks)
        except (*ROW_ERRORS, DBAPIError) as exc:
            if not row_error(exc):
                raise
            failures = self.one_by_one(batch)
            if failures and self.on_failures is not None:
                self.on_failures(failures)

    def one_by_one(self, batch: FileBatch) -> list[Failure]:
        by_owner: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
        for row, owner in zip(batch.replicas, batch.owners, strict=True):
            by_owner[owner].append(row)
        failures = []
        for index, (row, line) in enumerate(zip(batch.files, batch.lines, strict=True)):
            replica_rows = by_owner.get(index, [])
            try:
                self.write([row], replica_rows, [batch.masks[index]])
            except (*ROW_ERRORS, DBAPIError) as exc:
                if not row_error(exc):
                    raise
                reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
                failures.append(
                    (line, f"the catalog database refused the record: {reason}", len(replica_rows))
                )
        return failures

    def drain(self) -> None:
        """Stored as soon as handed over: nothing is ever pending here."""

    close = drain
    abort = drain


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

    def refused(self, failures: list[Failure]) -> None:
        """Records the database refused were counted when prepared; uncount them."""
        self.counts["files"] -= len(failures)
        self.counts["replicas"] -= sum(lost for _, _, lost in failures)

    def refresh_ids(self) -> None:
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(experiments.c.name, experiments.c.id, experiments.c.station)
            ).all()
            self.experiment_ids = {name: id_ for name, id_, _ in rows}
            self.experiment_stations = {name: station for name, _, station in rows}
            self.location_ids = dict(conn.execute(select(locations.c.name, locations.c.id)).all())

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
                    keep=("station", "type", "description", "start", "end", "users", "meta"),
                ),
                list(params.values()),
            )
            new_stations = sorted({p["station"] for p in params.values() if p["station"]})
            if new_stations:
                conn.execute(
                    dialect_insert(conn, stations).on_conflict_do_nothing(),
                    [{"name": s} for s in new_stations],
                )
        self.counts["experiments"] += len(params)
        self.refresh_ids()

    def prepare_files(self, rows: Sequence[FileRow], lines: list[int]) -> FileBatch:
        """Resolve names to ids. A path twice in one batch: its last record replaces the
        earlier one whole, on both databases (one PostgreSQL statement may not upsert a
        row twice, so the batch has each file once)."""
        if len({(r[0], r[1]) for r in rows}) < len(rows):
            last = {(r[0], r[1]): i for i, r in enumerate(rows)}
            keep = sorted(last.values())
            rows, lines = [rows[i] for i in keep], [lines[i] for i in keep]
        experiment_ids = self.experiment_ids
        location_ids = self.location_ids
        now = self.now
        batch = FileBatch(
            [(experiment_ids[r[0]], *r[1:9]) for r in rows],
            [
                (
                    location_ids[rep[0]],
                    rep[1],
                    rep[2],
                    now if rep[2] == "verified" else None,
                    experiment_ids[r[0]],
                    r[1],
                )
                for r in rows
                for rep in r[9]
            ],
            lines,
            [index for index, r in enumerate(rows) for _ in r[9]],
            [masks([(location_ids[rep[0]], rep[2]) for rep in r[9]]) for r in rows],
        )
        self.counts["files"] += len(batch.files)
        self.counts["replicas"] += len(batch.replicas)
        return batch
