"""The reader process for a SQLite catalog (see reader.py).

Python's sqlite3 module takes the GIL back for every row it returns and every REGEXP it
calls, so a reading thread would only take turns with the planner: this child reads
instead, on a connection of its own, the file rows and each batch's lookups in one read
transaction. It loads sqlite3 and policyd's REGEXP only.
"""

from __future__ import annotations

import sqlite3
from typing import IO
from urllib.request import pathname2url

from policyd.catalog.sqlite_functions import prepare_reader
from policyd.planner.reader import Request, filled, json_ids, lookup_ids, send, serve

PROGRAM = "policyd.planner.sqlite_reader"
HINT = "check that the catalog file is still there and that this user may read it"


def _run(request: Request, out: IO[bytes]) -> None:
    """The query a batch at a time, each batch's lookups, to `out`."""
    database = pathname2url(request["database"])
    # mode=rw: a missing file is an error, not a new empty catalog
    conn = sqlite3.connect(f"file:{database}?mode=rw", uri=True, isolation_level=None)
    prepare_reader(conn)
    conn.execute("BEGIN")  # the file rows and their lookups from one snapshot
    query = request["query"]
    cursor = conn.execute(query["sql"], query["params"])
    send(out, "columns", [column[1] for column in cursor.description])
    while batch := cursor.fetchmany(request["batch"]):
        found = []
        for lookup in request["lookups"]:
            ids = json_ids(lookup_ids(lookup, batch))
            rows = conn.execute(lookup["sql"], filled(lookup, ids=ids)) if ids != "[]" else ()
            found.append(list(rows))
        send(out, "batch", (batch, found))
    conn.execute("COMMIT")
    send(out, "done", None)


if __name__ == "__main__":
    serve(_run, (sqlite3.Error, OSError))
