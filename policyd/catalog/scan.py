"""`policyd catalog import scan LOC`: record what is really on a location.

The walk and the catalog's replicas on the location are two streams sorted the same
way (path segment by segment), merged like two sorted files: a path in both is a
replica to refresh (size, mtime), a path only on storage is recorded (as a replica of
the catalog file it belongs to, matched through the default layout or
`--experiment/--path-prefix`, or as a new file record with unknown md5), and a
replica only in the catalog is marked `missing`. Neither stream is held in memory,
and the catalog needs no index on replica paths, which keeps imports fast.
Symbolic links are never followed: a location's tree is what lies under its root.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fs
from fs.base import FS
from sqlalchemy import Connection, Engine, bindparam, func, select, update

from policyd.catalog.bulk import Bulk
from policyd.catalog.importers import ImportUsageError, clean_prefix
from policyd.catalog.records import name_and_ext
from policyd.catalog.schema import files, replicas
from policyd.catalog.writer import (
    BATCH,
    FILE_COLUMNS,
    REPLICA_COLUMNS,
    CatalogWriter,
    dialect_insert,
    file_ids,
    replica_upsert,
    replica_values,
)
from policyd.diagnostics import Diagnostic, Span

Entry = tuple[str, int, float]
SCAN_COLUMNS = ("size", "mtime", "seen_at")
SEGMENT_BREAK = "\x01"  # below every character a file name holds, so it sorts as "/" must


def segment_key(path: str) -> str:
    """Sorting by this sorts by path segments, the order a sorted depth-first walk has."""
    return path.replace("/", SEGMENT_BREAK)


@dataclass
class ScanReport:
    location: str
    counts: dict[str, int] = field(
        default_factory=lambda: {
            "seen": 0,
            "refreshed": 0,
            "new_replicas": 0,
            "new_files": 0,
            "missing": 0,
            "unmatched": 0,
            "symlinks_skipped": 0,
        }
    )
    problems: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return True

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "scan",
            "location": self.location,
            **self.counts,
            "problems": [d.to_dict() for d in self.problems],
        }


def walk_local(root: Path, under: str, report: ScanReport) -> Iterator[Entry]:
    """Depth-first in name order with os.scandir, whose entries carry their stat."""
    start = root / under if under else root

    def listing(folder: Path) -> Iterator[os.DirEntry[str]]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            return iter(())
        return iter(entries)

    stack = [listing(start)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        if entry.is_symlink():
            report.counts["symlinks_skipped"] += 1
        elif entry.is_dir(follow_symlinks=False):
            stack.append(listing(Path(entry.path)))
        else:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                yield Path(entry.path).relative_to(root).as_posix(), st.st_size, st.st_mtime


def walk_fs(url: str, under: str) -> Iterator[Entry]:
    """The same order through pyfilesystem2, for locations that are not local folders."""
    with fs.open_fs(url) as filesystem:
        yield from _walk_fs(filesystem, "/" + under if under else "/")


def _walk_fs(filesystem: FS, folder: str) -> Iterator[Entry]:
    for info in sorted(filesystem.scandir(folder, namespaces=["details"]), key=lambda i: i.name):
        path = fs.path.join(folder, info.name)
        if info.is_dir:
            yield from _walk_fs(filesystem, path)
        elif not info.has_namespace("link") or not info.is_link:
            modified = info.modified.timestamp() if info.modified else 0.0
            yield path.lstrip("/"), info.size or 0, modified


def walk_location(url: str, under: str, report: ScanReport) -> Iterator[Entry]:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return walk_local(Path(parsed.path), under, report)
    return walk_fs(url, under)


class Scanner:
    def __init__(
        self,
        engine: Engine,
        location: str,
        now: float,
        report: ScanReport,
        experiment: str | None,
        path_prefix: str | None,
        on_problem: Callable[[Diagnostic], None] | None,
    ) -> None:
        self.engine = engine
        self.now = now
        self.report = report
        self.writer = CatalogWriter(engine, now)
        self.location_id = self.writer.location_ids[location]
        self.experiment = experiment
        self.path_prefix = clean_prefix(path_prefix)
        self.on_problem = on_problem
        self.refreshed: list[dict[str, Any]] = []
        self.missing: list[int] = []
        self.unknown: list[Entry] = []
        with engine.connect() as conn:
            # Built once, so the bulk path compiles each statement once per scan.
            self.new_file_insert = dialect_insert(conn, files).on_conflict_do_nothing()
            self.replica_upsert = replica_upsert(conn, SCAN_COLUMNS)

    def known_replicas(self, conn: Connection, under: str) -> Iterator[Any]:
        """The location's replicas in walk order, streamed (a server-side cursor on PG)."""
        key = func.replace(replicas.c.path, "/", SEGMENT_BREAK)
        if conn.dialect.name == "postgresql":
            key = key.collate("C")  # byte order, as Python compares the walk's names
        stmt = (
            select(
                replicas.c.id,
                replicas.c.path,
                replicas.c.state,
                replicas.c.size,
                replicas.c.mtime,
                files.c.size.label("file_size"),
            )
            .join(files, files.c.id == replicas.c.file_id)
            .where(replicas.c.location_id == self.location_id)
            .order_by(key)
        )
        if under:
            stmt = stmt.where(replicas.c.path.startswith(under + "/", autoescape=True))
        yield from conn.execution_options(stream_results=True, yield_per=BATCH).execute(stmt)

    def run(self, walk: Iterator[Entry], under: str) -> None:
        with self.engine.connect() as reader:
            known = self.known_replicas(reader, under)
            row = next(known, None)
            for entry in walk:
                self.report.counts["seen"] += 1
                key = segment_key(entry[0])
                while row is not None and segment_key(row.path) < key:
                    self.lost(row)
                    row = next(known, None)
                if row is not None and row.path == entry[0]:
                    self.refresh(row, entry)
                    row = next(known, None)
                else:
                    self.unknown.append(entry)
                self.flush(BATCH)
            while row is not None:
                self.lost(row)
                row = next(known, None)
        self.flush(0)

    def refresh(self, row: Any, entry: Entry) -> None:
        """A verified (or corrupt) replica keeps its state only if nothing changed."""
        _, size, mtime = entry
        unchanged = row.size in (None, size) and row.mtime in (None, mtime)
        state = row.state if row.state in ("verified", "corrupt") and unchanged else "present"
        if row.state == "verified" and size != row.file_size:
            state = "present"
        self.refreshed.append({"rid": row.id, "state": state, "rsize": size, "rmtime": mtime})

    def lost(self, row: Any) -> None:
        if row.state != "missing":
            self.missing.append(row.id)

    def flush(self, threshold: int) -> None:
        if len(self.refreshed) + len(self.missing) + len(self.unknown) <= threshold:
            return
        with self.engine.begin() as conn:
            if self.refreshed:
                conn.execute(
                    update(replicas)
                    .where(replicas.c.id == bindparam("rid"))
                    .values(
                        state=bindparam("state"),
                        size=bindparam("rsize"),
                        mtime=bindparam("rmtime"),
                        seen_at=self.now,
                    ),
                    self.refreshed,
                )
            if self.missing:
                conn.execute(
                    update(replicas)
                    .where(replicas.c.id == bindparam("rid"))
                    .values(state="missing"),
                    [{"rid": rid} for rid in self.missing],
                )
            if self.unknown:
                self.record_new(conn, self.unknown)
        self.report.counts["refreshed"] += len(self.refreshed)
        self.report.counts["missing"] += len(self.missing)
        self.refreshed, self.missing, self.unknown = [], [], []

    def owner(self, path: str) -> tuple[int, str] | None:
        """(experiment id, file path) for a path the catalog has no replica at."""
        ids = self.writer.experiment_ids
        if self.experiment is not None:
            prefix = f"{self.path_prefix}/" if self.path_prefix else ""
            if path.startswith(prefix) and len(path) > len(prefix):
                return ids[self.experiment], path[len(prefix) :]
            return None
        stations = self.writer.experiment_stations
        first, _, rest = path.partition("/")
        name, _, inner = rest.partition("/")
        if inner and stations.get(name, "") == first:  # {station}/{experiment}/{path}
            return ids[name], inner
        if rest and first in stations and not stations[first]:  # {experiment}/{path}
            return ids[first], rest
        return None

    def record_new(self, conn: Connection, entries: list[Entry]) -> None:
        owned = []
        for path, size, mtime in entries:
            owner = self.owner(path)
            if owner is None:
                self.unmatched(path)
            else:
                owned.append((owner, path, size, mtime))
        if not owned:
            return
        bulk = Bulk(conn)
        before = file_ids(bulk, [owner for owner, *_ in owned])
        new_files = {
            owner: (owner[0], owner[1], *name_and_ext(owner[1]), size, None, mtime, mtime, None)
            for owner, _path, size, mtime in owned
            if owner not in before
        }
        if new_files:
            bulk.execute(self.new_file_insert, FILE_COLUMNS, list(new_files.values()))
            self.report.counts["new_files"] += len(new_files)
        ids = {**before, **file_ids(bulk, new_files)} if new_files else before
        rows = [
            (
                *replica_values(ids[owner], self.location_id, path, "present", self.now),
                size,
                mtime,
                self.now,
            )
            for owner, path, size, mtime in owned
        ]
        bulk.execute(self.replica_upsert, REPLICA_COLUMNS + SCAN_COLUMNS, rows)
        self.report.counts["new_replicas"] += len(rows)

    def unmatched(self, path: str) -> None:
        self.report.counts["unmatched"] += 1
        if len(self.report.problems) < 20:
            diag = Diagnostic(
                "unmatched-file",
                f"{path}: not under an experiment's layout path; not recorded",
                Span(self.report.location),
                "warning",
                "give --experiment NAME [--path-prefix DIR] to say whose files these are",
            )
            self.report.problems.append(diag)
            if self.on_problem:
                self.on_problem(diag)


def scan_location(
    engine: Engine,
    location: str,
    url: str,
    *,
    now: float,
    under: str = "",
    experiment: str | None = None,
    path_prefix: str | None = None,
    on_problem: Callable[[Diagnostic], None] | None = None,
) -> ScanReport:
    report = ScanReport(location)
    scanner = Scanner(engine, location, now, report, experiment, path_prefix, on_problem)
    if experiment is not None and experiment not in scanner.writer.experiment_ids:
        raise ImportUsageError(f"experiment {experiment!r} is not in the catalog")
    scanner.run(walk_location(url, under, report), under)
    return report
