"""Reading a SQLite plan's candidate files in a process of its own.

On PostgreSQL the server works in its own process and a thread reads ahead
(prefetch.py). SQLite works inside the planner's process, and Python's sqlite3 module
takes the GIL back for every row it returns and every REGEXP it calls, so a reading
thread only takes turns with the planner. A reader process is a second interpreter:
it runs the file query, and each batch's replica and job lookups, on a connection of
its own in one read transaction, and hands the batches over a pipe while the planner
decides on the one before. The plan then costs about the longer of the two, not their
sum.

The planner compiles the statements (SQLAlchemy, with its parameter processing) and
sends them as SQL text and parameters; this module needs only sqlite3, so the child
starts in a few tens of milliseconds. Rows come back as the driver returns them.

The child is `python -m policyd.planner.sqlite_reader`: it reads one request from its
stdin and writes ("batch", ...) items, then ("done", None), or ("error", message), to
its stdout, pickled. A parent that stops reading kills the child; a child that dies is a
ReaderFailed with the last line it wrote to stderr.
"""

from __future__ import annotations

import os
import pickle
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypedDict
from urllib.request import pathname2url

from policyd.catalog.sqlite_functions import prepare_reader

if TYPE_CHECKING:  # the parent's side only: the child never loads SQLAlchemy
    from sqlalchemy.engine import Dialect
    from sqlalchemy.sql import Select

PROGRAM = "policyd.planner.sqlite_reader"


class Statement(TypedDict):
    sql: str
    params: list[Any]
    ids_at: int | None  # the parameter a lookup takes its batch's ids in (a JSON list)


class Request(TypedDict):
    database: str
    query: Statement
    lookups: list[Statement]
    batch: int


Batch = tuple[list[tuple[Any, ...]], list[list[tuple[Any, ...]]]]


Processing = list[tuple[int, Callable[[Any], Any]]]


def driver_statement(statement: Select[Any], dialect: Dialect, ids: str | None = None) -> Statement:
    """`statement` as SQLAlchemy would hand it to the SQLite driver: its text, and its
    parameters in order, each through its type's bind processing. `ids` names the
    parameter a lookup takes its batch's ids in."""
    compiled = statement.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    values = compiled.construct_params({ids: "[]"} if ids else None)
    names = list(compiled.positiontup or ())  # type: ignore[attr-defined]
    binds = compiled.binds  # type: ignore[attr-defined]
    params: list[Any] = []
    for name in names:
        # an expanded IN list's parameters are NAME_1, NAME_2, ... of the bind NAME
        bind = binds.get(name)
        if bind is None:
            bind = binds.get(name.rsplit("_", 1)[0])
        process = None if bind is None else bind.type.dialect_impl(dialect).bind_processor(dialect)
        params.append(values[name] if process is None else process(values[name]))
    return {"sql": str(compiled), "params": params, "ids_at": names.index(ids) if ids else None}


def result_processing(statement: Select[Any], dialect: Dialect, upto: int) -> Processing:
    """What SQLAlchemy does to the first `upto` columns of `statement`'s rows (decoding
    JSON, ...), for rows read straight from the driver."""
    out: Processing = []
    for index, column in enumerate(list(statement.selected_columns)[:upto]):
        process = column.type.dialect_impl(dialect).result_processor(dialect, None)
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
    """The reader process could not read the catalog; the message says why."""


def read_batches(request: Request) -> Iterator[Batch]:
    """The query's rows a batch at a time, each with its lookups' rows, read by a
    child process. Leaving the loop early kills the child."""
    # -P keeps the working directory (a config repository, say) off the child's path;
    # it finds policyd where this process did, and needs nothing else but the stdlib.
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    sent: Request = {**request, "database": str(Path(request["database"]).resolve())}
    with tempfile.TemporaryFile() as said:  # a file: a pipe the child fills would stall it
        try:
            child = subprocess.Popen(
                [sys.executable, "-P", "-m", PROGRAM],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=said,
                env=env,
            )
        except OSError as exc:
            raise ReaderFailed(f"cannot start the catalog reader process: {exc}") from None
        assert child.stdin is not None and child.stdout is not None
        try:
            yield from _received(child, sent, said)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait()
            child.stdin.close()
            child.stdout.close()


def _received(child: subprocess.Popen[bytes], request: Request, said: IO[bytes]) -> Iterator[Batch]:
    assert child.stdin is not None and child.stdout is not None
    try:
        pickle.dump(request, child.stdin, protocol=pickle.HIGHEST_PROTOCOL)
        child.stdin.close()
        while True:
            kind, value = pickle.load(child.stdout)
            if kind == "done":
                return
            if kind == "error":
                raise ReaderFailed(f"reading {request['database']}: {value}")
            yield value
    except (EOFError, pickle.UnpicklingError, BrokenPipeError):
        # it died before its last word: killed, out of memory, or it never started
        child.wait()
        said.seek(0)
        words = said.read().decode(errors="replace").strip().splitlines()
        raise ReaderFailed(
            f"the catalog reader process for {request['database']} ended with exit code "
            f"{child.returncode} before the plan's file query did"
            + (f": {words[-1]}" if words else "")
        ) from None


def _run(request: Request, out: IO[bytes]) -> None:
    """The child's work: the query a batch at a time, each batch's lookups, to `out`."""
    database = pathname2url(request["database"])
    # mode=rw: a missing file is an error, not a new empty catalog
    conn = sqlite3.connect(f"file:{database}?mode=rw", uri=True, isolation_level=None)
    prepare_reader(conn)
    conn.execute("BEGIN")  # the file rows and their lookups from one snapshot
    query = request["query"]
    cursor = conn.execute(query["sql"], query["params"])
    while batch := cursor.fetchmany(request["batch"]):
        ids = "[" + ",".join(str(row[0]) for row in batch) + "]"
        found = [_lookup(conn, lookup, ids) for lookup in request["lookups"]]
        pickle.dump(("batch", (batch, found)), out, protocol=pickle.HIGHEST_PROTOCOL)
        out.flush()
    conn.execute("COMMIT")
    pickle.dump(("done", None), out)
    out.flush()


def _lookup(conn: sqlite3.Connection, lookup: Statement, ids: str) -> list[tuple[Any, ...]]:
    params: Sequence[Any] = lookup["params"]
    if lookup["ids_at"] is not None:
        params = [*params[: lookup["ids_at"]], ids, *params[lookup["ids_at"] + 1 :]]
    return conn.execute(lookup["sql"], params).fetchall()


def main() -> None:
    out = sys.stdout.buffer
    try:
        _run(pickle.load(sys.stdin.buffer), out)
    except BrokenPipeError:
        return  # the planner stopped reading
    except (sqlite3.Error, OSError) as exc:
        pickle.dump(("error", f"{type(exc).__name__}: {exc}"), out)
        out.flush()


if __name__ == "__main__":
    main()
