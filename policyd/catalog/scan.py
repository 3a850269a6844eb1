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
from urllib.parse import unquote, urlparse

import fs
import fs.errors
import fs.opener.errors
from fs.base import FS
from sqlalchemy import Connection, Engine, bindparam, func, select, update

from policyd.catalog.bulk import Bulk
from policyd.catalog.importers import MAX_KEPT_PROBLEMS, ImportUsageError, clean_prefix
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
from policyd.diagnostics import Diagnostic, Severity, Span

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
            "unreadable": 0,
        }
    )
    problems: list[Diagnostic] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    on_problem: Callable[[Diagnostic], None] | None = None

    @property
    def ok(self) -> bool:
        """Unreadable folders make a scan incomplete: its caller must not trust it."""
        return not self.unreadable

    def problem(self, code: str, message: str, severity: Severity, hint: str | None = None) -> None:
        diag = Diagnostic(code, message, Span(self.location), severity, hint)
        if len(self.problems) < MAX_KEPT_PROBLEMS:
            self.problems.append(diag)
        if self.on_problem:
            self.on_problem(diag)

    def cannot_read(self, folder: str, error: OSError) -> None:
        self.counts["unreadable"] += 1
        self.unreadable.append(folder)
        self.problem(
            "unreadable-folder",
            f"cannot read {folder or 'the root'}: {error.strerror or error}; "
            "its replicas are left as they were",
            "error",
            "give policyd read access to the whole location, then scan again",
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": "scan",
            "location": self.location,
            **self.counts,
            "problems": [d.to_dict() for d in self.problems],
        }


def utf8_name(path: str, report: ScanReport) -> bool:
    """Names that are not UTF-8 (os gives them as surrogates) cannot go in the catalog."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        report.counts["unmatched"] += 1
        report.problem("bad-name", f"{shown}: the name is not valid UTF-8; skipped", "warning")
        return False
    return True


def walk_local(root: Path, under: str, report: ScanReport) -> Iterator[Entry]:
    """Depth-first in name order with os.scandir, whose entries carry their stat."""
    start = root / under if under else root
    if not start.is_dir() or start.is_symlink():
        raise ImportUsageError(
            f"scan {report.location}: {start} is not a folder; is the storage mounted? "
            "(nothing was changed)"
        )

    def listing(folder: Path) -> Iterator[os.DirEntry[str]]:
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            report.cannot_read(folder.relative_to(root).as_posix().removeprefix("."), exc)
            return iter(())
        return iter(entries)

    stack = [listing(start)]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
            continue
        rel = Path(entry.path).relative_to(root).as_posix()
        if entry.is_symlink():
            report.counts["symlinks_skipped"] += 1
        elif not utf8_name(rel, report):
            continue
        elif entry.is_dir(follow_symlinks=False):
            stack.append(listing(Path(entry.path)))
        else:
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                yield rel, st.st_size, st.st_mtime


def walk_fs(url: str, under: str, report: ScanReport) -> Iterator[Entry]:
    """The same order through pyfilesystem2, for locations that are not local folders."""
    try:
        filesystem = fs.open_fs(url)
    except (fs.errors.CreateFailed, fs.opener.errors.OpenerError) as exc:
        raise ImportUsageError(
            f"scan {report.location}: cannot open {url}: {exc} (nothing was changed)"
        ) from None
    with filesystem:
        start = "/" + under if under else "/"
        if not filesystem.isdir(start):
            raise ImportUsageError(
                f"scan {report.location}: {start} is not a folder of {url} (nothing was changed)"
            )
        yield from _walk_fs(filesystem, start, report)


def _walk_fs(filesystem: FS, folder: str, report: ScanReport) -> Iterator[Entry]:
    try:
        infos = sorted(
            filesystem.scandir(folder, namespaces=["details", "link"]), key=lambda i: i.name
        )
    except fs.errors.FSError as exc:
        report.cannot_read(folder.strip("/"), OSError(str(exc)))
        return
    for info in infos:
        path = fs.path.join(folder, info.name)
        if info.has_namespace("link") and info.is_link:
            report.counts["symlinks_skipped"] += 1
        elif not utf8_name(path.lstrip("/"), report):
            continue
        elif info.is_dir:
            yield from _walk_fs(filesystem, path, report)
        else:
            modified = info.modified.timestamp() if info.modified else 0.0
            yield path.lstrip("/"), info.size or 0, modified


def walk_location(url: str, under: str, report: ScanReport) -> Iterator[Entry]:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return walk_local(Path(unquote(parsed.path)), under, report)
    return walk_fs(url, under, report)


class Scanner:
    def __init__(
        self,
        engine: Engine,
        location: str,
        now: float,
        report: ScanReport,
        experiment: str | None,
        path_prefix: str | None,
        allow_empty: bool = False,
    ) -> None:
        self.engine = engine
        self.now = now
        self.report = report
        self.writer = CatalogWriter(engine, now)
        self.location_id = self.writer.location_ids[location]
        self.experiment = experiment
        self.path_prefix = clean_prefix(path_prefix)
        self.allow_empty = allow_empty
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
            # substr, not LIKE: SQLite's LIKE ignores case, and paths do not
            prefix = under + "/"
            stmt = stmt.where(func.substr(replicas.c.path, 1, len(prefix)) == prefix)
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
        if self.report.counts["seen"] == 0 and self.missing and not self.allow_empty:
            raise ImportUsageError(
                f"scan {self.report.location}: found no files where the catalog has "
                f"{len(self.missing)} replicas; is the storage mounted? (nothing was changed; "
                "if the location really is empty, scan again with --allow-empty)"
            )
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
        """Not on storage, unless it lies where the walk could not look."""
        if row.state == "missing" or any(
            row.path.startswith(folder + "/") or not folder for folder in self.report.unreadable
        ):
            return
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
        self.report.problem(
            "unmatched-file",
            f"{path}: not under an experiment's layout path; not recorded",
            "warning",
            "give --experiment NAME [--path-prefix DIR] to say whose files these are",
        )


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
    allow_empty: bool = False,
) -> ScanReport:
    """`allow_empty`: a walk that finds nothing may mark every replica there missing
    (without it, that is taken for an unmounted disk and refused)."""
    report = ScanReport(location, on_problem=on_problem)
    under = clean_prefix(under, "--under") or ""
    scanner = Scanner(engine, location, now, report, experiment, path_prefix, allow_empty)
    if experiment is not None and experiment not in scanner.writer.experiment_ids:
        raise ImportUsageError(f"experiment {experiment!r} is not in the catalog")
    scanner.run(walk_location(url, under, report), under)
    return report
