"""The SQLite reader process (policyd/planner/sqlite_reader.py): plans read through it
are the plans read in-process, its statements are what SQLAlchemy would send, a
failure in it is an error that names the catalog, and a consumer that stops early
leaves no process behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest
from sqlalchemy import event

from policyd.cli import friendly_errors
from policyd.planner import engine as planner_engine
from policyd.planner.engine import Planner, PlanOptions, make_plan
from policyd.planner.run import site_rules
from policyd.planner.sqlite_reader import ReaderFailed, driver_statement, read_batches
from policyd.rules.ir import time_value
from policyd.site import Site
from policyd.stations.config import load_site_config
from tests.planner.harness import CASES, assert_wanted, load_case, plan_case

ROOT = Path(__file__).resolve().parents[2]
APS = ROOT / "examples" / "aps" / "policyd.yaml"
AT = "2026-11-24T08:00:00Z"
CASE_FILES = sorted(CASES.glob("*.yaml"))


@pytest.fixture(scope="module")
def aps_catalog(tmp_path_factory: pytest.TempPathFactory) -> str:
    """examples/aps's three beamlines, 3,000 files, a third of them needing action,
    imported with `policyd catalog import jsonl` as bench/plan.py does."""
    work = tmp_path_factory.mktemp("aps")
    source = work / "catalog.jsonl"
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
    url = f"sqlite:///{work / 'catalog.db'}"
    env = {**os.environ, "POLICYD_CONFIG": str(APS), "POLICYD_CATALOG": url}
    subprocess.run(
        [sys.executable, "-m", "policyd", "catalog", "import", "jsonl", str(source)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return url


def _aps_plan(url: str, monkeypatch: pytest.MonkeyPatch, reader_from: int) -> bytes:
    monkeypatch.setenv("POLICYD_CATALOG", url)
    monkeypatch.setattr(planner_engine, "READER_FROM_FILES", reader_from)
    site = Site(load_site_config(APS))
    try:
        plan = make_plan(
            site.config, site.reader, site_rules(site.config), PlanOptions(time_value(AT, site.tz))
        )
        return plan.json_bytes()
    finally:
        site.reader.dispose()


def test_a_plan_read_by_the_reader_is_the_plan_read_in_process(
    aps_catalog: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    started: list[str] = []
    real = planner_engine.read_batches

    def counted(request: Any) -> Any:
        started.append(request["database"])
        return real(request)

    monkeypatch.setattr(planner_engine, "read_batches", counted)
    in_process = _aps_plan(aps_catalog, monkeypatch, reader_from=10**9)
    assert started == []  # below the threshold the planner reads itself
    through_reader = _aps_plan(aps_catalog, monkeypatch, reader_from=0)
    assert len(started) == 1
    kinds = {action["kind"] for action in json.loads(in_process)["actions"]}
    assert {"copy", "verify"} <= kinds  # a plan with work in it
    assert through_reader == in_process


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_every_case_through_the_reader(
    path: Path, tmp_path: Path, sqlite_catalog: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(planner_engine, "READER_FROM_FILES", 0)
    catalog = tmp_path / "catalog.db"
    catalog.write_bytes(sqlite_catalog.read_bytes())
    case = load_case(path)
    assert_wanted(case, plan_case(case, tmp_path, f"sqlite:///{catalog}"))


def test_the_reader_sends_what_sqlalchemy_sends(
    aps_catalog: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The examples' file query holds IN lists, globs, regexes and JSON paths: each
    parameter through its type's processing, in order."""
    monkeypatch.setenv("POLICYD_CATALOG", aps_catalog)
    site = Site(load_site_config(APS))
    planner = Planner(site.config, site.reader, site_rules(site.config), PlanOptions(0.0))
    query = planner.file_query(None).order_by(planner_engine.files.c.id)
    sent: list[tuple[str, Any]] = []

    def capture(_c: Any, _cur: Any, sql: str, params: Any, _ctx: Any, _many: bool) -> None:
        sent.append((sql, params))

    event.listen(site.reader, "before_cursor_execute", capture)
    with site.reader.connect() as conn:
        conn.execute(query).fetchmany(1)
        conn.execute(planner.replica_query, {"ids": "[1,2]"}).all()
    event.remove(site.reader, "before_cursor_execute", capture)
    site.reader.dispose()
    ours = driver_statement(query, site.reader.dialect)
    lookup = driver_statement(planner.replica_query, site.reader.dialect, ids="ids")
    assert len(ours["params"]) > 20
    assert (ours["sql"], list(ours["params"])) == (sent[0][0], list(sent[0][1]))
    assert lookup["ids_at"] is not None
    lookup["params"][lookup["ids_at"]] = "[1,2]"
    assert (lookup["sql"], lookup["params"]) == (sent[1][0], list(sent[1][1]))


def _request(database: str) -> Any:
    return {
        "database": database,
        "query": {"sql": "SELECT id, path FROM files ORDER BY id", "params": [], "ids_at": None},
        "lookups": [
            {
                "sql": "SELECT count(*) FROM replicas WHERE file_id IN "
                "(SELECT value FROM json_each(?))",
                "params": ["[]"],
                "ids_at": 0,
            }
        ],
        "batch": 500,
    }


def test_a_missing_catalog_is_an_error_that_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "gone.db"
    with pytest.raises(ReaderFailed, match=r"gone\.db"):
        list(read_batches(_request(str(missing))))
    assert not missing.exists()  # the reader does not create a catalog


def test_the_cli_says_what_failed_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    @friendly_errors
    def plan() -> None:
        list(read_batches(_request(str(tmp_path / "gone.db"))))

    with pytest.raises(click.exceptions.Exit) as exit_info:
        plan()
    assert exit_info.value.exit_code == 1
    said = capsys.readouterr().err
    assert "gone.db" in said and "unable to open database file" in said
    assert "hint: check that the catalog file is still there" in said
    assert "Traceback" not in said


def test_batches_arrive_in_order_with_their_lookups(aps_catalog: str) -> None:
    database = aps_catalog.removeprefix("sqlite:///")
    batches = list(read_batches(_request(database)))
    ids = [row[0] for rows, _ in batches for row in rows]
    assert ids == sorted(ids) and len(ids) == 3000
    assert [len(rows) for rows, _ in batches] == [500] * 6
    # each batch's lookup counted the replicas of that batch's files
    assert sum(found[0][0][0] for _, found in batches) > 3000


def _children() -> set[int]:
    pid = os.getpid()
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out |= {int(p) for p in text}
    return out


def test_leaving_early_ends_the_reader(aps_catalog: str) -> None:
    database = aps_catalog.removeprefix("sqlite:///")
    before = _children()
    batches = read_batches(_request(database))
    next(batches)
    assert _children() - before  # the reader runs
    batches.close()
    assert not _children() - before


def test_a_reader_killed_mid_way_is_an_error_not_a_traceback(aps_catalog: str) -> None:
    database = aps_catalog.removeprefix("sqlite:///")
    before = _children()
    batches = read_batches(_request(database))
    next(batches)  # the child is blocked writing the next batches into the pipe
    for pid in _children() - before:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(ReaderFailed, match=r"exit code -9"):
        list(batches)
    assert not _children() - before
