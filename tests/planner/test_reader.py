"""The reader processes (policyd/planner/reader.py, sqlite_reader.py, pg_reader.py):
plans read through them are the plans read in-process, on SQLite and PostgreSQL and
whatever PostgreSQL's id ranges; their statements are what SQLAlchemy would send; a
failure in them is an error that names the catalog; and a consumer that stops early
leaves no process behind."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from sqlalchemy import create_engine, event
from sqlalchemy.engine import make_url

from policyd.catalog.db import shown
from policyd.cli import friendly_errors
from policyd.planner import engine as planner_engine
from policyd.planner import pg_reader, sqlite_reader
from policyd.planner.engine import Planner, PlanOptions, make_plan
from policyd.planner.reader import (
    ReaderFailed,
    ReaderProcess,
    driver_statement,
    filled,
    id_ranges,
    lookup_ids,
    read_batches,
)
from policyd.planner.run import site_rules
from policyd.rules.ir import time_value
from policyd.site import Site
from policyd.stations.config import load_site_config
from tests.planner.conftest import empty_pg
from tests.planner.harness import CASES, assert_wanted, load_case, plan_case

ROOT = Path(__file__).resolve().parents[2]
APS = ROOT / "examples" / "aps" / "policyd.yaml"
AT = "2026-11-24T08:00:00Z"
CASE_FILES = sorted(CASES.glob("*.yaml"))


@pytest.fixture(scope="module")
def aps_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/aps's three beamlines, 3,000 files, a third of them needing action, as
    bench/plan.py generates them."""
    source = tmp_path_factory.mktemp("aps") / "catalog.jsonl"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gen_catalog.py"),
            *("--files", "3000", "--files-per-experiment", "100", "--needing-action", "0.3"),
            *("--stations", "1ID,8IDI,6BM", "--recent-copy", "hpc", "--recent-days", "180"),
            *("--scratch-days", "180", "--now", AT, "--out", str(source)),
        ],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return source


def _import(source: Path, url: str) -> None:
    """`policyd catalog import jsonl`, as bench/plan.py imports."""
    env = {**os.environ, "POLICYD_CONFIG": str(APS), "POLICYD_CATALOG": url}
    subprocess.run(
        [sys.executable, "-m", "policyd", "catalog", "import", "jsonl", str(source)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def aps_catalog(aps_source: Path) -> str:
    """The examples/aps catalog on SQLite."""
    url = f"sqlite:///{aps_source.with_suffix('.db')}"
    _import(aps_source, url)
    return url


@pytest.fixture
def aps_pg_catalog(aps_source: Path, pg_database: str) -> Iterator[str]:
    """The examples/aps catalog on PostgreSQL, emptied again after the test."""
    empty_pg(pg_database)
    _import(aps_source, pg_database)
    yield pg_database
    empty_pg(pg_database)


def _aps_plan(url: str, monkeypatch: pytest.MonkeyPatch, reader_from: int) -> bytes:
    """The examples/aps plan's file. Read by a reader, it is encoded ahead (json=True)
    whenever the planner waits for the next batch."""
    monkeypatch.setenv("POLICYD_CATALOG", url)
    monkeypatch.setattr(planner_engine, "READER_FROM_FILES", reader_from)
    site = Site(load_site_config(APS))
    options = PlanOptions(time_value(AT, site.tz), json=reader_from == 0)
    try:
        plan = make_plan(site.config, site.reader, site_rules(site.config), options)
        return plan.json_bytes()
    finally:
        site.reader.dispose()


def _counting_readers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The programs of the reader processes started from now on."""
    started: list[str] = []
    real = planner_engine.read_batches

    def counted(process: ReaderProcess, *rest: Any) -> Any:
        started.append(process.program)
        return real(process, *rest)

    monkeypatch.setattr(planner_engine, "read_batches", counted)
    return started


def test_a_plan_read_by_the_reader_is_the_plan_read_in_process(
    aps_catalog: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = _counting_readers(monkeypatch)
    in_process = _aps_plan(aps_catalog, monkeypatch, reader_from=10**9)
    assert started == []  # below the threshold the planner reads itself
    through_reader = _aps_plan(aps_catalog, monkeypatch, reader_from=0)
    assert started == [sqlite_reader.PROGRAM]
    kinds = {action["kind"] for action in json.loads(in_process)["actions"]}
    assert {"copy", "verify"} <= kinds  # a plan with work in it
    assert through_reader == in_process


@pytest.mark.pg
def test_a_plan_read_by_the_postgresql_reader_is_the_plan_read_in_process(
    aps_pg_catalog: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one id range and in many (3,000 files in ranges of 700 ids, so the last is
    short): the same plan as the planner's own reading thread."""
    started = _counting_readers(monkeypatch)
    in_process = _aps_plan(aps_pg_catalog, monkeypatch, reader_from=10**9)
    assert started == []
    whole = _aps_plan(aps_pg_catalog, monkeypatch, reader_from=0)
    monkeypatch.setattr(planner_engine, "RANGE_FILES", 700)
    ranged = _aps_plan(aps_pg_catalog, monkeypatch, reader_from=0)
    assert started == [pg_reader.PROGRAM] * 2
    assert json.loads(in_process)["summary"]["copy"] > 100  # a plan with work in it
    assert whole == in_process
    assert ranged == in_process


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_every_case_through_the_reader(
    path: Path, tmp_path: Path, catalog_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL in ranges of 2 ids, so that a case's files span several."""
    monkeypatch.setattr(planner_engine, "READER_FROM_FILES", 0)
    monkeypatch.setattr(planner_engine, "RANGE_FILES", 2)
    started = _counting_readers(monkeypatch)
    queries: list[Any] = []
    real = planner_engine.Planner.file_pass_query

    def file_pass_query(planner: Planner) -> Any:
        queries.append(real(planner))
        return queries[-1]

    monkeypatch.setattr(planner_engine.Planner, "file_pass_query", file_pass_query)
    case = load_case(path)
    assert_wanted(case, plan_case(case, tmp_path, catalog_url))
    program = sqlite_reader.PROGRAM if catalog_url.startswith("sqlite") else pg_reader.PROGRAM
    # read through the reader, unless its rules need no file pass
    assert started == [program for query in queries if query is not None]


def _sent_and_ours(url: str, ids: Any) -> tuple[list[tuple[str, Any]], list[Any]]:
    """What SQLAlchemy sends for the examples' file query and a replica lookup, and
    what driver_statement makes of them."""
    os.environ["POLICYD_CATALOG"] = url
    site = Site(load_site_config(APS))
    planner = Planner(site.config, site.reader, site_rules(site.config), PlanOptions(0.0))
    query = planner.file_query(None).order_by(planner_engine.files.c.id)
    sent: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        sent.append((sql, params))

    event.listen(site.reader, "before_cursor_execute", capture)
    with site.reader.connect() as conn:
        conn.execute(query).fetchmany(1)
        conn.execute(planner.replica_query, {"ids": ids}).all()
    event.remove(site.reader, "before_cursor_execute", capture)
    dialect = site.reader.dialect
    site.reader.dispose()
    ours = [
        driver_statement(query, dialect),
        driver_statement(planner.replica_query, dialect, ("ids",)),
    ]
    return [s for s in sent if s[0].startswith("SELECT")], ours


def test_the_reader_sends_what_sqlalchemy_sends(
    aps_catalog: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The examples' file query holds IN lists, globs, regexes and JSON paths: each
    parameter through its type's processing, in order."""
    monkeypatch.setenv("POLICYD_CATALOG", aps_catalog)
    sent, (query, lookup) = _sent_and_ours(aps_catalog, "[1,2]")
    assert len(query["params"]) > 20
    assert (query["sql"], query["params"]) == (sent[0][0], list(sent[0][1]))
    assert lookup["slots"] == {"ids": 0}
    assert (lookup["sql"], filled(lookup, ids="[1,2]")) == (sent[1][0], list(sent[1][1]))


@pytest.mark.pg
def test_the_postgresql_reader_sends_what_sqlalchemy_sends(
    aps_pg_catalog: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psycopg2 takes named parameters: the same, as a mapping."""
    monkeypatch.setenv("POLICYD_CATALOG", aps_pg_catalog)
    sent, (query, lookup) = _sent_and_ours(aps_pg_catalog, [1, 2])
    assert isinstance(query["params"], dict) and len(query["params"]) > 20
    assert (query["sql"], query["params"]) == (sent[0][0], sent[0][1])
    assert lookup["slots"] == {"ids": "ids"}
    assert (lookup["sql"], filled(lookup, ids=[1, 2])) == (sent[1][0], sent[1][1])


def _sqlite_request(database: str) -> Any:
    return {
        "source": database,
        "database": database,
        "query": {"sql": "SELECT id, path FROM files ORDER BY id", "params": [], "slots": {}},
        "lookups": [
            {
                "sql": "SELECT count(*) FROM replicas WHERE file_id IN "
                "(SELECT value FROM json_each(?))",
                "params": ["[]"],
                "slots": {"ids": 0},
            }
        ],
        "batch": 500,
    }


def _pg_request(url: str, range_files: int = 700) -> Any:
    _, connect = create_engine(url).dialect.create_connect_args(make_url(url))
    return {
        "source": shown(url),
        "connect": connect,
        "settings": planner_engine.set_local(planner_engine.PG_SETTINGS),
        "query": {
            "sql": "SELECT id, path FROM files WHERE id >= %(low)s AND id < %(high)s ORDER BY id",
            "params": {"low": None, "high": None},
            "slots": {"chunk_low": "low", "chunk_high": "high"},
        },
        "lookups": [
            {
                "sql": "SELECT count(*) FROM replicas WHERE file_id = ANY(%(ids)s)",
                "params": {"ids": None},
                "slots": {"ids": "ids"},
            }
        ],
        "batch": 500,
        "chunks": {
            "bounds": {
                "sql": "SELECT min(id), max(id), count(*) FROM files",
                "params": {},
                "slots": {},
            },
            "files": range_files,
            "settings": planner_engine.set_local(planner_engine.PG_CHUNK_SETTINGS),
        },
    }


def _batches(request: Any, codes: list[Any] | None = None) -> Iterator[Any]:
    """The reader's batches for a request made by _sqlite_request or _pg_request."""
    program, hint = (
        (pg_reader.PROGRAM, pg_reader.HINT)
        if "connect" in request
        else (sqlite_reader.PROGRAM, sqlite_reader.HINT)
    )
    reader = ReaderProcess(program, hint)
    return read_batches(reader, request, (codes if codes is not None else []).extend)


@pytest.fixture(params=["sqlite", pytest.param("pg", marks=pytest.mark.pg)])
def aps_request(request: pytest.FixtureRequest) -> Any:
    """A bare request for the examples/aps catalog, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return _sqlite_request(request.getfixturevalue("aps_catalog").removeprefix("sqlite:///"))
    return _pg_request(request.getfixturevalue("aps_pg_catalog"))


def test_a_missing_catalog_is_an_error_that_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "gone.db"
    with pytest.raises(ReaderFailed, match=r"gone\.db"):
        list(_batches(_sqlite_request(str(missing))))
    assert not missing.exists()  # the reader does not create a catalog


@pytest.mark.pg
def test_a_missing_postgresql_database_is_an_error_that_names_it(pg_database: str) -> None:
    url = make_url(pg_database).set(password="s3cret", database="policyd_no_such_db")
    with pytest.raises(ReaderFailed) as failed:
        list(_batches(_pg_request(url.render_as_string(hide_password=False))))
    said = str(failed.value)
    assert "policyd_no_such_db" in said and 'database "policyd_no_such_db" does not exist' in said
    assert "s3cret" not in said
    assert "PostgreSQL server is up" in failed.value.hint


def test_the_cli_says_what_failed_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    @friendly_errors
    def plan() -> None:
        list(_batches(_sqlite_request(str(tmp_path / "gone.db"))))

    with pytest.raises(click.exceptions.Exit) as exit_info:
        plan()
    assert exit_info.value.exit_code == 1
    said = capsys.readouterr().err
    assert "gone.db" in said and "unable to open database file" in said
    assert "hint: check that the catalog file is still there" in said
    assert "Traceback" not in said


def test_batches_arrive_in_order_with_their_lookups(aps_request: Any) -> None:
    """On PostgreSQL in ranges of up to 700 ids: a range's batches end where it does."""
    codes: list[Any] = []
    batches = list(_batches(aps_request, codes))
    ids = [row[0] for rows, _ in batches for row in rows]
    assert ids == list(range(1, 3001))  # none lost or read twice at a range's ends
    sizes = [len(rows) for rows, _ in batches]
    if "database" in aps_request:
        assert sizes == [500] * 6
    else:  # each range's batches, the first ranges smaller
        spans = [min(end, 3001) - start for start, end in id_ranges(1, 3000, 700, 3000)]
        assert spans[:7] == [21, 42, 84, 168, 336, 672, 700] and sum(spans) == 3000
        assert sizes == [n for span in spans for n in [500] * (span // 500) + [span % 500] if n]
    # each batch's lookup counted the replicas of that batch's files
    assert sum(found[0][0][0] for _, found in batches) > 3000
    assert len(codes) == 2  # the query's two columns described before the first batch


def _children() -> set[int]:
    pid = os.getpid()
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out |= {int(p) for p in text}
    return out


def test_leaving_early_ends_the_reader(aps_request: Any) -> None:
    before = _children()
    batches = _batches(aps_request)
    next(batches)
    assert _children() - before  # the reader runs
    batches.close()
    assert not _children() - before


def test_a_reader_killed_mid_way_is_an_error_not_a_traceback(aps_request: Any) -> None:
    before = _children()
    aps_request["batch"] = 50  # more batches than the pipe holds
    batches = _batches(aps_request)
    next(batches)  # the child is blocked writing the next batches into the pipe
    for pid in _children() - before:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(ReaderFailed, match=r"exit code -9"):
        list(batches)
    assert not _children() - before


def test_a_lookup_with_a_condition_is_for_the_rows_it_names() -> None:
    """The jobs lookup is for the files a run rule hit: its flag columns, any true."""
    rows = [(1, "a", True, None), (2, "b", False, 0), (3, "c", None, 1), (4, "d", 0, False)]
    every: Any = {"sql": "", "params": [], "slots": {}}
    assert lookup_ids(every, rows) == [1, 2, 3, 4]
    assert lookup_ids({**every, "when": [2, 3]}, rows) == [1, 3]
    assert lookup_ids({**every, "when": [3]}, rows[:2]) == []


def _planned_with_readers(
    url: str, monkeypatch: pytest.MonkeyPatch, rules: list[str]
) -> tuple[list[ReaderProcess], Any]:
    """Plan examples/aps with `rules`, any catalog read by a reader; the readers the
    plan started, and the plan."""
    monkeypatch.setenv("POLICYD_CATALOG", url)
    monkeypatch.setattr(planner_engine, "READER_FROM_FILES", 0)
    started: list[ReaderProcess] = []
    real = planner_engine.ReaderProcess

    def start(*args: Any) -> ReaderProcess:
        started.append(real(*args))
        return started[-1]

    monkeypatch.setattr(planner_engine, "ReaderProcess", start)
    site = Site(load_site_config(APS))
    try:
        options = PlanOptions(time_value(AT, site.tz), rules=rules)
        return started, make_plan(site.config, site.reader, site_rules(site.config), options)
    finally:
        site.reader.dispose()


def test_a_plan_without_a_file_pass_starts_no_reader(
    aps_catalog: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fixity rule alone has no file pass query."""
    started, plan = _planned_with_readers(aps_catalog, monkeypatch, ["tape-fixity"])
    assert started == []
    assert {a.kind for a in plan.actions} <= {"verify"}


def test_a_plan_that_fails_before_its_reader_reads_leaves_no_reader(
    aps_catalog: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reader starts with the plan; a plan that fails before it reads ends it."""

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("compiling failed")

    monkeypatch.setattr(planner_engine, "driver_statement", broken)
    before = _children()
    with pytest.raises(RuntimeError, match="compiling failed"):
        _planned_with_readers(aps_catalog, monkeypatch, [])
    assert not _children() - before


def test_a_plan_that_fails_while_it_reads_leaves_no_reader(
    aps_catalog: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any) -> None:
        raise RuntimeError("deciding failed")

    monkeypatch.setattr(planner_engine.Planner, "plan_file", broken)
    before = _children()
    with pytest.raises(RuntimeError, match="deciding failed"):
        _planned_with_readers(aps_catalog, monkeypatch, [])
    assert not _children() - before


def test_id_ranges_follow_the_files_not_the_ids() -> None:
    """An upsert that updates uses up an id: a catalog of 1M files may hold ids up to
    10**9. Ranges are sized by the files' count, so there are as many as for dense ids."""
    dense = id_ranges(1, 1_000_000, 100_000, 1_000_000)
    sparse = id_ranges(1, 10**9, 100_000, 1_000_000)
    assert len(sparse) == len(dense) == 15
    for ranges, high in ((dense, 1_000_000), (sparse, 10**9)):
        assert ranges[0][0] == 1 and ranges[-1][1] > high
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    assert id_ranges(5, 5, 100_000, None) == [(5, 3130)]
    assert id_ranges(1, 10, 100_000, -1) == [(1, 3126)]  # never analyzed: dense


@pytest.mark.pg
def test_a_sparse_catalog_is_read_in_few_ranges(aps_pg_catalog: str) -> None:
    """The bounds say 10**9 ids for 3,000 files: the child reads them all, in order, in
    about as many ranges as for dense ids (each range a cursor of its own)."""
    request = _pg_request(aps_pg_catalog, range_files=1000)
    request["chunks"]["bounds"]["sql"] = "SELECT 1, 1000000000, 3000"
    ids = [row[0] for rows, _ in _batches(request) for row in rows]
    assert ids == list(range(1, 3001))
    assert len(id_ranges(1, 10**9, 1000, 3000)) < 10


@pytest.mark.pg
@pytest.mark.parametrize("where", ["query", "lookup"])
def test_a_postgresql_error_mid_way_is_a_reader_failure(aps_pg_catalog: str, where: str) -> None:
    """Past the first batches: in the file stream's thread (1/0 at file 1,700) or in a
    lookup while that thread waits on its full queue."""
    request = _pg_request(aps_pg_catalog)
    request["batch"] = 100
    if where == "query":
        request["query"]["sql"] = request["query"]["sql"].replace(
            "SELECT id, path", "SELECT id, path || (1 / (id - 1700))::text"
        )
    else:
        request["lookups"][0]["sql"] = (
            "SELECT count(*) FROM replicas WHERE file_id = ANY(%(ids)s) "
            "AND 1 / (2000 - file_id) > -1"
        )
    before = _children()
    with pytest.raises(ReaderFailed, match="division by zero") as failed:
        list(_batches(request))
    assert "PostgreSQL server is up" in failed.value.hint
    assert not _children() - before


class _Scripted(ReaderProcess):
    """A reader child that runs `script` instead of a reader program."""

    def __init__(self, script: str) -> None:
        self.program, self.hint = "script", "check the script"
        self.said = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close())
        self.child = subprocess.Popen(
            [sys.executable, "-c", script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.said,
        )


def test_idle_work_is_done_while_the_next_item_is_not_there() -> None:
    """A child that writes its next item only once told to (a line on stdin): the
    planner must call `idle` while it waits, or it would wait for ever (the consumer
    runs in a thread, so such a failure ends the test instead of hanging it)."""
    script = (
        "import pickle, sys\n"
        "out = sys.stdout.buffer\n"
        "pickle.load(sys.stdin.buffer)\n"
        "for item in [('columns', [None]), ('batch', ([(1,)], [])), ('done', None)]:\n"
        "    pickle.dump(item, out); out.flush()\n"
        "    sys.stdin.buffer.readline()\n"
    )
    reader = _Scripted(script)
    assert reader.child.stdin is not None
    go = os.dup(reader.child.stdin.fileno())  # sending the request closes stdin
    released = [False]
    releases: list[int] = []

    def idle() -> bool:
        if not released[0]:  # once per wait: the child then writes its next item
            released[0] = True
            releases.append(1)
            os.write(go, b"\n")
        return True

    def arrived(_codes: list[Any]) -> None:
        released[0] = False

    got: list[Any] = []

    def consume() -> None:
        for batch in read_batches(reader, _sqlite_request("unused.db"), arrived, idle):
            released[0] = False
            got.append(batch)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    consumer.join(timeout=60)
    os.close(go)
    if consumer.is_alive():
        reader.close()
        pytest.fail("the planner waited for an item without calling idle")
    assert got == [([(1,)], [])]
    assert len(releases) == 2  # the batch and the last word each waited for idle


def test_a_reader_outlives_a_ctrl_c_that_reaches_it(aps_request: Any) -> None:
    """Ctrl-C goes to the whole process group; the planner handles it and ends the
    reader, which must not die of it first (its death would be reported as the error)."""
    aps_request["batch"] = 100
    reader = ReaderProcess(
        pg_reader.PROGRAM if "connect" in aps_request else sqlite_reader.PROGRAM, "hint"
    )
    batches = read_batches(reader, aps_request, lambda codes: None)
    first = next(batches)  # the child is past its start, reading
    os.kill(reader.child.pid, signal.SIGINT)
    rest = list(batches)  # to its last word: a child dead of the signal is a ReaderFailed
    assert len(first[0]) + sum(len(rows) for rows, _ in rest) == 3000
