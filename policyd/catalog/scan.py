"""`policyd catalog import scan LOC`: record what is really on a location.

A walk streams (path, size, mtime) in batches; each batch refreshes the replicas the
catalog already knows at those paths and records the rest, either as replicas of
catalog files (matched through the default layout or `--experiment/--path-prefix`)
or, for files the catalog has never seen, as new file records with unknown md5.
Replicas not seen by the walk are then marked `missing`. Symbolic links are never
followed: a location's tree is what lies under its root.
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
from sqlalchemy import Connection, Engine, bindparam, or_, select, update

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
    """os.scandir, iteratively; DirEntry.stat() reuses what readdir already returned."""
    stack = [(root / under) if under else root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            if entry.is_symlink():
                report.counts["symlinks_skipped"] += 1
                continue
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    rel = Path(entry.path).relative_to(root).as_posix()
                    yield rel, st.st_size, st.st_mtime
        stack.extend(reversed(subdirs))


def walk_fs(url: str, under: str) -> Iterator[Entry]:
    with fs.open_fs(url) as filesystem:
        start = "/" + under if under else "/"
        for path, info in filesystem.walk.info(start, namespaces=["details"]):
            if info.is_dir:
                continue
            modified = info.modified.timestamp() if info.modified else None
            yield path.lstrip("/"), info.size or 0, modified or 0.0


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
        with engine.connect() as conn:
            # Built once, so the bulk path compiles each statement once per scan.
            self.new_file_insert = dialect_insert(conn, files).on_conflict_do_nothing()
            self.replica_upsert = replica_upsert(conn, SCAN_COLUMNS)
        self.on_problem = on_problem

    def owner(self, path: str) -> tuple[int, str] | None:
        """(experiment id, file path) for a path not yet known as a replica."""
        if self.experiment is not None:
            prefix = f"{self.path_prefix}/" if self.path_prefix else ""
            if path.startswith(prefix) and len(path) > len(prefix):
                return self.writer.experiment_ids[self.experiment], path[len(prefix) :]
            return None
        parts = path.split("/", 2)
        if len(parts) == 3:
            station, name, rest = parts
            if self.writer.experiment_stations.get(name) == station:
                return self.writer.experiment_ids[name], rest
        if len(parts) >= 2:
            name, _, rest = path.partition("/")
            if name in self.writer.experiment_ids and not self.writer.experiment_stations[name]:
                return self.writer.experiment_ids[name], rest
        return None

    def batch(self, entries: list[Entry]) -> None:
        with self.engine.begin() as conn:
            known = {
                row.path: row
                for row in conn.execute(
                    select(
                        replicas.c.id,
                        replicas.c.path,
                        replicas.c.state,
                        replicas.c.size,
                        replicas.c.mtime,
                        files.c.size.label("file_size"),
                    )
                    .join(files, files.c.id == replicas.c.file_id)
                    .where(
                        replicas.c.location_id == self.location_id,
                        replicas.c.path.in_([e[0] for e in entries]),
                    )
                )
            }
            refreshed = []
            unknown = []
            for path, size, mtime in entries:
                row = known.get(path)
                if row is None:
                    unknown.append((path, size, mtime))
                    continue
                unchanged = row.size in (None, size) and row.mtime in (None, mtime)
                keep = row.state in ("verified", "corrupt") and unchanged
                state = row.state if keep else "present"
                if row.state == "verified" and size != row.file_size:
                    state = "present"
                refreshed.append({"rid": row.id, "state": state, "rsize": size, "rmtime": mtime})
            if refreshed:
                conn.execute(
                    update(replicas)
                    .where(replicas.c.id == bindparam("rid"))
                    .values(
                        state=bindparam("state"),
                        size=bindparam("rsize"),
                        mtime=bindparam("rmtime"),
                        seen_at=self.now,
                    ),
                    refreshed,
                )
                self.report.counts["refreshed"] += len(refreshed)
            if unknown:
                self.record_new(conn, unknown)

    def record_new(self, conn: Connection, entries: list[Entry]) -> None:
        owned = []
        for path, size, mtime in entries:
            owner = self.owner(path)
            if owner is None:
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
                continue
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

    def mark_missing(self, under: str) -> None:
        stmt = update(replicas).where(
            replicas.c.location_id == self.location_id,
            replicas.c.state != "missing",
            or_(replicas.c.seen_at.is_(None), replicas.c.seen_at < self.now),
        )
        if under:
            stmt = stmt.where(replicas.c.path.startswith(under + "/", autoescape=True))
        with self.engine.begin() as conn:
            result = conn.execute(stmt.values(state="missing"))
        self.report.counts["missing"] = result.rowcount


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
    batch: list[Entry] = []
    for entry in walk_location(url, under, report):
        batch.append(entry)
        report.counts["seen"] += 1
        if len(batch) >= BATCH:
            scanner.batch(batch)
            batch = []
    if batch:
        scanner.batch(batch)
    scanner.mark_missing(under)
    return report
