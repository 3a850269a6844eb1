"""`policyd catalog import`: DM listings, jsonl, csv and Mongo catalogs into the catalog.

Each importer is a generator of (line, column, record-or-error) feeding one loader,
so every format gets the same batching, the same bad-line reports and the same
upsert semantics. Nothing is held per input line beyond the current batch.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from sqlalchemy import Engine

from policyd.catalog.pipeline import StoreProcess, worth_a_second_process
from policyd.catalog.records import (
    BadRecord,
    ExperimentRow,
    FileRow,
    ReplicaRow,
    experiment_row,
    fast_file_row,
    file_row,
    record_kind,
)
from policyd.catalog.writer import BATCH, CatalogWriter, Failure, FileStore
from policyd.diagnostics import Diagnostic, Severity, Span

MAX_KEPT_PROBLEMS = 100

Parsed = tuple[int, int, ExperimentRow | FileRow | BadRecord]


class ImportUsageError(ValueError):
    """The import cannot start (wrong options, unknown experiment or location)."""


@dataclass
class ImportReport:
    kind: str
    source: str
    counts: dict[str, int] = field(default_factory=dict)
    bad_lines: int = 0
    problems: list[Diagnostic] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.bad_lines == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "source": self.source,
            **self.counts,
            "bad_lines": self.bad_lines,
            "problems": [d.to_dict() for d in self.problems],
        }


@dataclass(frozen=True)
class Placement:
    """Where a listing's files lie: LOC at the layout path, or at PREFIX/path."""

    location: str
    path_prefix: str | None = None

    def replica(self, row: FileRow, station: str | None, state: str = "present") -> ReplicaRow:
        if self.path_prefix is not None:
            path = f"{self.path_prefix}/{row.path}" if self.path_prefix else row.path
        else:
            path = default_layout_path(station, row.experiment, row.path)
        return ReplicaRow(self.location, path, state)


def default_layout_path(station: str | None, experiment: str, path: str) -> str:
    """`{station}/{experiment.name}/{file.path}` (rules.md section 5), without a station
    segment for an experiment that has none, so the path never holds an empty segment."""
    return f"{station}/{experiment}/{path}" if station else f"{experiment}/{path}"


def clean_prefix(prefix: str | None, option: str = "--path-prefix") -> str | None:
    """A folder inside a location: relative, without '..' (paths never leave the root)."""
    if prefix is None:
        return None
    if prefix.startswith("/"):
        raise ImportUsageError(
            f"{option} {prefix!r} must be relative to the location's root, not absolute"
        )
    cleaned = prefix.strip("/")
    if cleaned and any(s in ("", ".", "..") for s in cleaned.split("/")):
        raise ImportUsageError(f"{option} {prefix!r} must not contain '.', '..' or '//'")
    return cleaned


class Loader:
    """Consumes parsed records: batches them, resolves experiments, reports bad lines."""

    def __init__(
        self,
        engine: Engine,
        report: ImportReport,
        now: float,
        placement: Placement | None = None,
        on_problem: Callable[[Diagnostic], None] | None = None,
        second_process: bool = False,
    ) -> None:
        self.writer = CatalogWriter(engine, now)
        self.engine = engine
        self.second_process = second_process
        self.report = report
        self.placement = placement
        self.on_problem = on_problem
        self.pending_experiments: list[ExperimentRow] = []
        self.pending_files: list[FileRow] = []
        self.pending_lines: list[int] = []

    def problem(
        self,
        line: int,
        col: int,
        message: str,
        hint: str | None = None,
        severity: Severity = "error",
    ) -> None:
        """An error skips the record; a warning only says something looks wrong."""
        if severity == "error":
            self.report.bad_lines += 1
        code = "bad-record" if severity == "error" else "odd-record"
        diag = Diagnostic(code, message, Span(self.report.source, line, col), severity, hint)
        if len(self.report.problems) < MAX_KEPT_PROBLEMS:
            self.report.problems.append(diag)
        if self.on_problem:
            self.on_problem(diag)

    def run(self, parsed: Iterable[Parsed]) -> ImportReport:
        self.store: FileStore | StoreProcess = (
            StoreProcess(self.engine, self.refused)
            if self.second_process
            else FileStore(self.engine, self.refused)
        )
        try:
            for line, col, item in parsed:
                if isinstance(item, BadRecord):
                    self.problem(line, col, str(item))
                elif isinstance(item, ExperimentRow):
                    if item.start is not None and item.end is not None and item.end < item.start:
                        self.problem(
                            line,
                            col,
                            f"experiment {item.name!r} ends before it starts; imported as given",
                            "experiment.active will be false for it; correct its dates",
                            "warning",
                        )
                    self.pending_experiments.append(item)
                    if len(self.pending_experiments) >= BATCH:
                        self.flush_experiments()
                else:
                    self.add_file(line, item)
            self.flush_experiments()
            self.flush_files()
            self.store.close()
        except BaseException:
            self.store.abort()
            raise
        self.report.counts = dict(self.writer.counts)
        return self.report

    def add_file(self, line: int, row: FileRow) -> None:
        if row.experiment not in self.writer.experiment_ids and self.pending_experiments:
            self.flush_files()
            self.flush_experiments()
        if row.experiment not in self.writer.experiment_ids:
            self.problem(
                line,
                0,
                f"unknown experiment {row.experiment!r}",
                'import the experiment record first (a jsonl line with "record": "experiment")',
            )
            return
        if self.placement is not None:
            station = self.writer.experiment_stations[row.experiment]
            row.replicas.append(self.placement.replica(row, station))
        self.pending_files.append(row)
        self.pending_lines.append(line)
        if len(self.pending_files) >= BATCH:
            self.flush_files()

    def flush_experiments(self) -> None:
        if self.pending_experiments:
            self.store.drain()  # one writer at a time, and in input order
            self.writer.write_experiments(self.pending_experiments)
            self.pending_experiments = []

    def flush_files(self) -> None:
        if self.pending_files:
            self.store.store(self.writer.prepare_files(self.pending_files, self.pending_lines))
            self.pending_files, self.pending_lines = [], []

    def refused(self, failures: list[Failure]) -> None:
        self.writer.refused(failures)
        for line, reason, _ in failures:
            self.problem(line, 0, reason)


class CountingReader(io.RawIOBase):
    """Tells `progress` how far into a file the parser has read, every megabyte or so."""

    def __init__(self, raw: BinaryIO, progress: Callable[[int], None]) -> None:
        self.raw = raw
        self.progress = progress
        self.done = 0
        self.told = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        count = self.raw.readinto(buffer)  # type: ignore[attr-defined]
        self.done += count or 0
        if self.done - self.told >= 1 << 20 or not count:
            self.told = self.done
            self.progress(self.done)
        return count

    def close(self) -> None:
        self.raw.close()
        super().close()


def open_source(source: str, progress: Callable[[int], None] | None = None) -> BinaryIO:
    if source == "-":
        return sys.stdin.buffer
    if os.path.isdir(source):
        raise ImportUsageError(f"{source} is a folder: give the file to import")
    stream = open(source, "rb", buffering=0 if progress else -1)  # noqa: SIM115
    if progress is None:
        return stream
    return io.BufferedReader(CountingReader(stream, progress), 1 << 16)  # type: ignore[return-value]


def parse_jsonl(stream: BinaryIO, tz: tzinfo, locations: frozenset[str]) -> Iterator[Parsed]:
    for number, raw in enumerate(stream, 1):
        if number == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark some editors write
        if not raw.strip():
            continue
        try:
            record = orjson.loads(raw.rstrip(b"\r\n"))
        except orjson.JSONDecodeError as exc:
            if "UTF-8" in exc.msg:
                yield number, 0, BadRecord(NOT_UTF8)
            else:
                yield number, exc.colno, BadRecord(f"not valid JSON: {exc.msg}")
            continue
        yield number, 0, to_row(record, tz, locations)


def parse_json_document(
    stream: BinaryIO, tz: tzinfo, locations: frozenset[str]
) -> Iterator[Parsed]:
    """A `.json` file: one record or a list of them, as the DM service returns them.
    A `.json` file that is really JSON lines is read as such. Records of a list are
    reported by their place in it ("record 3"), not by line."""
    data = stream.read()
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if exc.lineno > 1 and data.lstrip()[:1] == b"{":
            yield from parse_jsonl(io.BytesIO(data), tz, locations)
        else:
            yield exc.lineno, exc.colno, BadRecord(f"not valid JSON: {exc.msg}")
        return
    records = document if isinstance(document, list) else [document]
    for index, record in enumerate(records, 1):
        row = to_row(record, tz, locations)
        if isinstance(row, BadRecord) and len(records) > 1:
            row = BadRecord(f"record {index} of the list: {row}")
        yield 0, 0, row


def to_row(
    record: Any, tz: tzinfo, locations: frozenset[str]
) -> ExperimentRow | FileRow | BadRecord:
    if not isinstance(record, dict):
        return BadRecord(f"a record must be a JSON object, not {type(record).__name__}")
    if record.get("record") == "file":
        fast = fast_file_row(record, locations)
        if fast is not None:
            return fast
    try:
        if record_kind(record) == "experiment":
            return experiment_row(record, tz)
        return file_row(record, tz, known_locations=locations)
    except BadRecord as bad:
        return bad


DM_LISTING_SPLIT = re.compile(r" (?=[A-Za-z_][A-Za-z0-9_]*=)")
NOT_UTF8 = "the line is not valid UTF-8"


def text_lines(stream: BinaryIO) -> Iterator[str]:
    """Lines as text, a byte-order mark dropped; bytes that are not UTF-8 become U+FFFD,
    which the parsers then report (a path with U+FFFD would match nothing on disk)."""
    return iter(io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline=""))


def parse_dm_listing(stream: BinaryIO, tz: tzinfo, experiment: str) -> Iterator[Parsed]:
    """`key=value key=value` lines; a value runs up to the next ` key=` (it may hold spaces)."""
    for number, raw in enumerate(text_lines(stream), 1):
        line = raw.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if "\ufffd" in line:
            yield number, 0, BadRecord(NOT_UTF8)
            continue
        record: dict[str, Any] = {}
        bad = None
        for part in DM_LISTING_SPLIT.split(line.strip()):
            key, sep, value = part.partition("=")
            if not sep or not key:
                bad = BadRecord(f"expected key=value, got {part!r}")
                break
            if key in record:
                bad = BadRecord(f"{key} is given twice")
                break
            record[key] = value
        if bad is None:
            try:
                yield number, 0, file_row(record, tz, experiment=experiment, from_text=True)
                continue
            except BadRecord as exc:
                bad = exc
        yield number, 0, bad


REQUIRED_CSV = ("experimentName", "experimentFilePath", "fileSize")
CSV_FIELD_LIMIT = 16 << 20


def parse_csv(stream: BinaryIO, tz: tzinfo, locations: frozenset[str]) -> Iterator[Parsed]:
    """A header row of DM keys, then one file a row; a `replicas` cell holds the JSON
    list a jsonl record would."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    reader = csv.reader(text_lines(stream))
    try:
        header = next(reader, None)
    except csv.Error as exc:
        yield 1, 0, BadRecord(f"the header row is not CSV: {exc}")
        return
    if header is None:
        yield 1, 0, BadRecord("the file is empty: expected a header row of DM keys")
        return
    missing = [k for k in REQUIRED_CSV if k not in header]
    if missing:
        yield 1, 0, BadRecord(f"the header row lacks {', '.join(missing)}")
        return
    while True:
        try:
            row = next(reader, None)
        except csv.Error as exc:
            yield reader.line_num, 0, BadRecord(f"not a CSV row: {exc}")
            continue
        if row is None:
            return
        line = reader.line_num
        if not row:
            continue
        if len(row) > len(header):
            yield line, 0, BadRecord(f"more fields than the header's {len(header)}")
            continue
        if any("\ufffd" in value for value in row):
            yield line, 0, BadRecord(NOT_UTF8)
            continue
        cleaned = {k: v for k, v in zip(header, row, strict=False) if v != ""}
        try:
            yield line, 0, file_row(cleaned, tz, known_locations=locations, from_text=True)
        except BadRecord as bad:
            yield line, 0, bad


def looks_like_json_document(source: str) -> bool:
    return source != "-" and Path(source).suffix.lower() == ".json"


KINDS = ("jsonl", "csv", "dm-listing", "mongo", "scan")


def import_records(
    engine: Engine,
    kind: str,
    source: str,
    *,
    tz: tzinfo,
    locations: frozenset[str],
    now: float,
    experiment: str | None = None,
    location: str | None = None,
    path_prefix: str | None = None,
    on_problem: Callable[[Diagnostic], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import a `jsonl`, `csv` or `dm-listing` source (a path, or `-` for stdin)."""
    if location is not None and location not in locations:
        raise ImportUsageError(
            f"--location {location!r} is not a location of the site config "
            f"(known: {', '.join(sorted(locations)) or 'none'})"
        )
    placement = Placement(location, clean_prefix(path_prefix)) if location else None
    report = ImportReport(kind, source)
    loader = Loader(engine, report, now, placement, on_problem, worth_a_second_process(source))
    if kind == "dm-listing":
        if experiment is None or location is None:
            raise ImportUsageError("dm-listing needs --experiment NAME and --location LOC")
        if experiment not in loader.writer.experiment_ids:
            raise ImportUsageError(
                f"experiment {experiment!r} is not in the catalog: import its record first"
            )
    try:
        stream = open_source(source, progress)
    except OSError as exc:
        raise ImportUsageError(f"cannot read {source}: {exc.strerror}") from None
    with stream:
        if kind == "jsonl":
            parser = (
                parse_json_document(stream, tz, locations)
                if looks_like_json_document(source)
                else parse_jsonl(stream, tz, locations)
            )
        elif kind == "csv":
            parser = parse_csv(stream, tz, locations)
        elif kind == "dm-listing":
            assert experiment is not None
            parser = parse_dm_listing(stream, tz, experiment)
        else:
            raise ImportUsageError(f"unknown import kind {kind!r}: one of {', '.join(KINDS)}")
        return loader.run(parser)
