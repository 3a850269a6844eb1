"""Reading a plan's file pass in a process of its own, while the planner decides.

A plan is two kinds of work: the database finding the candidate files with their
replicas and jobs, and Python deciding what each file needs. In one process they take
turns: Python's sqlite3 module takes the GIL back for every row it returns, and on
PostgreSQL a reading thread decodes every row under the GIL and waits for each of its
round trips in turn. A reader process is a second interpreter: it runs the file query
and each batch's lookups in one snapshot and hands the batches over a pipe while the
planner decides on the one before, so the plan costs about the longer of the two, not
their sum. The children are `sqlite_reader.py` and `pg_reader.py`.

The planner compiles the statements (SQLAlchemy, with its parameter processing) and
sends them as driver SQL and parameters, so a child needs only its driver and starts
in tens of milliseconds. A child reads one Request (pickled) from its stdin and writes
("columns", the query's type codes), ("batch", ...) items, then ("done", None), or
("error", message), to its stdout. A parent that stops reading kills the child; a child
that dies is a ReaderFailed with the last line it wrote to stderr.

This module is loaded by the children too: it imports nothing beyond the standard
library at run time.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NotRequired, TypedDict

if TYPE_CHECKING:  # the parent's side only: the children never load SQLAlchemy
    from sqlalchemy.engine import Dialect
    from sqlalchemy.sql import Select

Params = list[Any] | dict[str, Any]


class Statement(TypedDict):
    sql: str
    params: Params  # a list for SQLite's qmark style, a dict for psycopg2's pyformat
    # where the values filled in per call go (a batch's ids, a chunk's bounds): their
    # position in a list, or their key in a dict
    slots: dict[str, int | str]
    # a lookup's: the columns of the query's rows one of which must be true for a row's
    # id to be looked up (none: every row's)
    when: NotRequired[list[int]]


class Catalog(TypedDict):
    """How a reader reaches the catalog."""

    source: str  # the catalog, as error messages name it
    database: NotRequired[str]  # SQLite: the catalog file
    connect: NotRequired[dict[str, Any]]  # PostgreSQL: psycopg2.connect's arguments
    settings: NotRequired[list[str]]  # PostgreSQL: run in each connection's transaction


class Request(Catalog):
    query: Statement
    lookups: list[Statement]
    batch: int
    chunks: NotRequired[Chunks]


class Chunks(TypedDict):
    """The query read an id range at a time, its bounds in the `low` and `high` slots:
    PostgreSQL returns a sorted query's first row only once it has found them all."""

    bounds: Statement  # the smallest and largest id, and about how many files there are
    files: int  # files per range
    settings: list[str]  # for the connection the query runs on


def id_ranges(low: int, high: int, step: int, files: float | None) -> list[tuple[int, int]]:
    """[start, end) ranges that cover the ids low..high, each for about `step` of the
    `files` (ids have gaps: an upsert that updates uses up an id too), but the first
    few (a 32nd of that, doubling): the planner waits for the first range's scan and
    sort with nothing to do. Without a count (never analyzed), ids are taken to be
    dense."""
    span = high - low + 1
    if files is not None and 0 < files < span:
        step = math.ceil(step * span / files)
    out: list[tuple[int, int]] = []
    start, size = low, max(step // 32, 1)
    while start <= high:
        out.append((start, start + size))
        start, size = start + size, min(size * 2, step)
    return out


def json_ids(ids: Iterable[Any]) -> str:
    """Ids as the JSON list a SQLite lookup takes (json_each)."""
    return "[" + ",".join(map(str, ids)) + "]"


def ids_of(rows: Sequence[tuple[Any, ...]], when: Sequence[int] | None) -> list[Any]:
    """The ids (first column) of the rows one of whose `when` columns is true; of every
    row without `when`."""
    if not when:
        return [row[0] for row in rows]
    return [row[0] for row in rows if any(row[i] for i in when)]


Batch = tuple[list[tuple[Any, ...]], list[list[tuple[Any, ...]]]]

Processing = list[tuple[int, Callable[[Any], Any]]]


def driver_statement(
    statement: Select[Any], dialect: Dialect, slots: tuple[str, ...] = ()
) -> Statement:
    """`statement` as SQLAlchemy would hand it to the driver: its text with IN lists
    expanded, and its parameters each through its type's bind processing. `slots` name
    the parameters filled in per call."""
    compiled = statement.compile(dialect=dialect)
    state = compiled.construct_expanded_state(dict.fromkeys(slots) if slots else None)
    values = state.parameters

    def bound(name: str) -> Any:
        process = state.processors.get(name)
        return values[name] if process is None else process(values[name])

    names = state.positiontup
    if names is None:  # named parameters (psycopg2)
        return {
            "sql": state.statement,
            "params": {name: bound(name) for name in values},
            "slots": {slot: slot for slot in slots},
        }
    return {
        "sql": state.statement,
        "params": [bound(name) for name in names],
        "slots": {slot: list(names).index(slot) for slot in slots},
    }


def lookup_ids(statement: Statement, rows: Sequence[tuple[Any, ...]]) -> list[Any]:
    """The ids of the rows a lookup is for."""
    return ids_of(rows, statement.get("when"))


def filled(statement: Statement, **values: Any) -> Params:
    """`statement`'s parameters with `values` in their slots."""
    params = statement["params"]
    if isinstance(params, dict):
        return {**params, **{statement["slots"][k]: v for k, v in values.items()}}
    out = list(params)
    for name, value in values.items():
        out[int(statement["slots"][name])] = value
    return out


def result_processing(
    statement: Select[Any], dialect: Dialect, upto: int, codes: Sequence[Any]
) -> Processing:
    """What SQLAlchemy does to the first `upto` columns of `statement`'s rows (decoding
    JSON, ...), for rows read straight from the driver; `codes` are the type codes of
    the driver's cursor description, which some processing depends on."""
    out: Processing = []
    for index, column in enumerate(list(statement.selected_columns)[:upto]):
        impl = column.type.dialect_impl(dialect)
        process = impl.result_processor(dialect, codes[index])
        if process is not None:
            out.append((index, process))
    return out


def processed(row: tuple[Any, ...], processing: Processing) -> tuple[Any, ...]:
    """`row` with `processing` applied, as SQLAlchemy's own rows would hold it."""
    values = list(row)
    for index, process in processing:
        values[index] = process(values[index])
    return tuple(values)


class ReaderFailed(RuntimeError):
    """The reader process could not read the catalog; the message says why, the hint
    what to check."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.hint = hint


class ReaderProcess:
    """A reader child, started before its request is ready: its interpreter and driver
    load (about 40 ms) while the planner gets ready. Closing it kills the child if it
    still runs."""

    def __init__(self, program: str, hint: str) -> None:
        self.program, self.hint = program, hint
        # -P keeps the working directory (a config repository, say) off the child's
        # path; it finds policyd where this process did, and the rest as this one does.
        root = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        # a file: a pipe the child fills would stall it (closed by close())
        self.said = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self.child = subprocess.Popen(
                [sys.executable, "-P", "-m", program],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self.said,
                env=env,
            )
        except OSError as exc:
            self.said.close()
            raise ReaderFailed(f"cannot start the catalog reader process: {exc}", hint) from None

    def close(self) -> None:
        """End the child; safe to call again. A request it died in the middle of may
        still be buffered: flushing it on close fails, and must not hide why."""
        child = self.child
        if child.poll() is None:
            child.kill()
        child.wait()
        for stream in (child.stdin, child.stdout, self.said):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def read_batches(
    reader: ReaderProcess,
    request: Request,
    columns: Callable[[list[Any]], None],
    idle: Callable[[], bool] | None = None,
) -> Iterator[Batch]:
    """The query's rows a batch at a time, each with its lookups' rows, read by
    `reader`; before the first, `columns` gets the type codes of the query's columns.
    While the next batch is not there yet, `idle` is called for as long as it says it
    has more to do. The reader is closed at the end, or when the loop is left early."""
    try:
        yield from _received(reader.child, request, reader.said, reader.hint, columns, idle)
    finally:
        reader.close()


def _received(
    child: subprocess.Popen[bytes],
    request: Request,
    said: IO[bytes],
    hint: str,
    columns: Callable[[list[Any]], None],
    idle: Callable[[], bool] | None,
) -> Iterator[Batch]:
    assert child.stdin is not None and child.stdout is not None
    answer = child.stdout
    try:
        pickle.dump(request, child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        child.stdin.close()
        while True:
            if idle is not None:
                _idle_until_ready(answer, idle)
            kind, value = pickle.load(answer)
            if kind == "done":
                return
            if kind == "error":
                raise ReaderFailed(f"reading {request['source']}: {value}", hint)
            if kind == "columns":
                columns(value)
            else:
                yield value
    except (EOFError, pickle.UnpicklingError, BrokenPipeError):
        # it died before its last word: killed, out of memory, or it never started
        child.wait()
        said.seek(0)
        words = said.read().decode(errors="replace").strip().splitlines()
        raise ReaderFailed(
            f"the catalog reader process for {request['source']} ended with exit code "
            f"{child.returncode} before the plan's file query did"
            + (f": {words[-1]}" if words else ""),
            hint,
        ) from None


def _idle_until_ready(answer: IO[bytes], idle: Callable[[], bool]) -> None:
    """Call `idle` while the pipe is empty and it has more to do. The pipe, not the
    buffer in front of it: a batch is larger than the buffer, so an empty pipe means
    the child is still at work (at worst, one idle call's wait for the small last
    items)."""
    while not select.select([answer], [], [], 0)[0]:
        if not idle():
            return


def send(out: IO[bytes], kind: str, value: Any) -> None:
    """One item of a child's answer."""
    pickle.dump((kind, value), out, protocol=pickle.HIGHEST_PROTOCOL)
    out.flush()


def serve(run: Callable[[Request, IO[bytes]], None], failures: tuple[type[Exception], ...]) -> None:
    """A child's main: the request from stdin, `run`'s answer to stdout; an error of
    one of the `failures` kinds is the answer's last word. Ctrl-C reaches the whole
    process group: the planner handles it and ends the child."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout.buffer
    try:
        run(pickle.load(sys.stdin.buffer), out)
    except BrokenPipeError:
        return  # the planner stopped reading
    except failures as exc:
        send(out, "error", f"{type(exc).__name__}: {str(exc).strip()}")
