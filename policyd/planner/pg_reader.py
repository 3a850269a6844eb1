"""The reader process for a PostgreSQL catalog (see reader.py).

In the planner's process, a reading thread decodes every row under the GIL and makes
its round trips one after another: the file rows, then the batch's replicas, then its
jobs, while the server waits for the next request. This child keeps two connections
busy at once, in one snapshot: a thread streams the file rows on the first (an id range
at a time, so rows flow before the whole catalog is scanned and sorted), and the main
thread looks up each batch's replicas and jobs on the second and pipes the batch on.
It loads psycopg2 and policyd's JSON decoding only.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import IO, Any

import psycopg2
import psycopg2.extensions
import psycopg2.extras

from policyd.catalog.json_columns import load_json
from policyd.planner.reader import Request, filled, id_ranges, lookup_ids, send, serve

PROGRAM = "policyd.planner.pg_reader"
HINT = "check that the PostgreSQL server is up and that this user may read the catalog"
DEPTH = 4  # file batches read ahead of their lookups


class _End:
    """The file stream's last item: its error, if it failed."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


def _connect(request: Request) -> Any:
    conn = psycopg2.connect(**request["connect"])
    # what SQLAlchemy registers on its connections (json_deserializer=load_json)
    psycopg2.extras.register_default_json(conn, loads=load_json)
    psycopg2.extras.register_default_jsonb(conn, loads=load_json)
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    return conn


def _execute_all(cursor: Any, statements: list[str]) -> None:
    for sql in statements:
        cursor.execute(sql)


def _file_rows(conn: Any, request: Request) -> Iterator[tuple[str, list[Any]]]:
    """("columns", the query's type codes), then ("batch", rows) a batch at a time,
    through a server-side cursor per id range."""
    query, chunks, size = request["query"], request.get("chunks"), request["batch"]
    if chunks is None:
        ranges: list[dict[str, Any]] = [{}]
    else:
        with conn.cursor() as cursor:
            # the bounds first: an index scan finds them (the settings turn it off)
            cursor.execute(chunks["bounds"]["sql"], chunks["bounds"]["params"])
            low, high, files = cursor.fetchone()
            _execute_all(cursor, chunks["settings"])
        ranges = (
            []
            if low is None
            else [
                {"chunk_low": start, "chunk_high": end}
                for start, end in id_ranges(low, high, chunks["files"], files)
            ]
        )
    for number, bounds in enumerate(ranges):
        with conn.cursor(f"policyd_files_{number}") as cursor:
            cursor.execute(query["sql"], filled(query, **bounds) if bounds else query["params"])
            batch = cursor.fetchmany(size)
            if number == 0:  # a server-side cursor describes its columns once fetched
                yield "columns", [column.type_code for column in cursor.description]
            while batch:
                yield "batch", batch
                batch = cursor.fetchmany(size)


def _run(request: Request, out: IO[bytes]) -> None:
    files, lookups = _connect(request), _connect(request)
    with files.cursor() as cursor:
        _execute_all(cursor, request.get("settings", []))
        cursor.execute("SELECT pg_export_snapshot()")
        (snapshot,) = cursor.fetchone()
    lookup = lookups.cursor()
    lookup.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))
    _execute_all(lookup, request.get("settings", []))

    items: queue.Queue[tuple[str, list[Any]] | _End] = queue.Queue(maxsize=DEPTH)

    def stream() -> None:
        try:
            for item in _file_rows(files, request):
                items.put(item)
            items.put(_End())
        except BaseException as exc:  # handed to the main thread, which reports it
            items.put(_End(exc))

    threading.Thread(target=stream, name="policyd-files", daemon=True).start()
    while not isinstance(item := items.get(), _End):
        kind, rows = item
        if kind == "columns":
            send(out, "columns", rows)
            continue
        found = []
        for statement in request["lookups"]:
            ids = lookup_ids(statement, rows)
            if ids:
                lookup.execute(statement["sql"], filled(statement, ids=ids))
            found.append(lookup.fetchall() if ids else [])
        send(out, "batch", (rows, found))
    if item.error is not None:
        raise item.error
    files.rollback()
    lookups.rollback()
    send(out, "done", None)


if __name__ == "__main__":
    serve(_run, (psycopg2.Error, OSError))
