#!/usr/bin/env python3
"""Plan time against its SQL floor, peak RSS and the steady state, on SQLite and PostgreSQL.

The planner's promise is that the database narrows and Python decides: a plan should
cost little more than reading its candidate files out of the catalog. This bench puts
the two side by side on a 1M-file catalog and prints the figures next to the goals
(plan <= 2x the floor and <= 10 s, peak RSS <= 500 MB, steady state <= 3 s, on each
database). It prints figures only: the goals are for a reader, not asserts.

Rules: examples/aps exactly as they are, config and all. The planner never reads a
location's URL (every location there has a capacity, so nothing is measured with
statvfs, and planning copies nothing), so its sftp:// and globus:// locations need no
file:// stand-ins; only the catalog is the bench's, given with POLICYD_CATALOG.

Catalog: bench/gen_catalog.py, shaped so that the files needing action (10%: only an
unverified replica on their DAQ location) are exactly the files the plan acts on:

* ``--stations 1ID,8IDI,6BM``: the three beamlines of examples/aps, so files sit on
  its three DAQ locations (daq-1id, daq-8idi, daq-6bm), settled ones on voyager;
* 30 experiments whatever ``--files`` is (10 per station, the newest of each still
  running), so every station has running, recently ended and long-ended experiments;
* ``--recent-copy hpc``: 8IDI/two-copies (ended < 180 days) and 1ID/two-copies
  (active or ended < 30 days) want a second copy on hpc;
* ``--scratch-days 180``: 6BM/expire-scratch expires scratch older than 180 days,
  which a settled site no longer holds;
* the generator's ``--now`` is the plan's ``--at``, so tape copies are where the
  archive rules want them (experiments ended more than 90 days before).

Imports run the real `policyd catalog import jsonl`, which stamps verified replicas
with the wall clock, after ``--at``: no fixity check is due. The steady state is the
same catalog with no file needing action; its plan has no file action (the ACL grants
of the access rules are per experiment, and only apply records them, so they stay).

Each measurement runs in its own spawned process, so its peak RSS (VmHWM) is its own.
Each catalog is planned and its floor replayed ``--runs`` times (3), in turn; the
figures are the median plan's and the median floor's, each run's are printed too, and
the peak RSS is the highest. After an import the database's writes are flushed
(CHECKPOINT, sync), so that no run is timed while the kernel writes the import back.
Plan time is make_plan plus Plan.write_json to a file; the rules check before it is
printed apart. The floor is the planner's file queries (the candidate SELECT it
streams, and the fixity passes' queries), captured from the plan's own run with a
cursor event and replayed on a bare DBAPI cursor read with fetchmany in the planner's
batch size. "All SQL" replays every statement the plan ran that way (replica lookups
per batch, fingerprint, usage, counts). The planner reads its next batches while it
decides on the current one, so the database's work and Python's overlap: plan minus
all SQL is the Python time the overlap did not hide. A catalog this size has its file
pass read by a reader process (policyd/planner/reader.py), which the cursor event does
not see: its file query (on PostgreSQL, each id range of it) and each batch's lookups
are recorded from what the planner hands it, and its CPU time and peak RSS are printed
beside the plan's.

Wall times are the figures; the CPU time of the bench's process is printed under them,
and the load average around the run, because on a shared machine wall time also
counts the waits for a core (on SQLite the CPU time is nearly all of the work, on
PostgreSQL only the client's share). On PostgreSQL the tables are vacuumed and analyzed
after each import (see `import_catalog`).

Example:
  python bench/plan.py --files 100000 --skip-pg
  python bench/plan.py --keep /tmp/plan-bench      # reuses its jsonl and SQLite files
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import make_url

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parent / "examples" / "aps" / "policyd.yaml"
PG_ADMIN = os.environ.get("POLICYD_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
AT = "2026-11-24T08:00:00Z"
EXPERIMENTS = 30
NEEDING_ACTION = 0.10
SHAPE = ["--stations", "1ID,8IDI,6BM", "--recent-copy", "hpc", "--recent-days", "180"]
SHAPE += ["--scratch-days", "180", "--now", AT]

GOAL_RATIO = 2.0
GOAL_PLAN_S = 10.0
GOAL_RSS_MB = 500
GOAL_STEADY_S = 3.0

Statement = tuple[str, Any, bool]  # SQL text, DBAPI parameters, a file query


def peak_rss_mb() -> float:
    """This process's peak RSS; VmHWM, unlike ru_maxrss, restarts at exec, so a spawned
    child does not inherit its parent's."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# ---- in the spawned children


def _file_query(context: Any) -> bool:
    """Whether a statement is one of the planner's file queries (the rows its decisions
    read, labelled "file.id", ...), as opposed to its lookups and aggregates. Told by
    the labels because stream_results, once set, stays on the planner's connection
    for every later statement."""
    statement = getattr(context, "invoked_statement", None)
    columns = getattr(statement, "selected_columns", None)
    return columns is not None and "file.id" in columns


def plan_job(url: str, out: str) -> dict[str, Any]:
    """Plan examples/aps at AT against `url`, writing the plan to `out`; the figures
    and every statement the plan ran."""
    os.environ["POLICYD_CATALOG"] = url
    from policyd.planner import engine as planner_engine
    from policyd.planner.engine import PG_CHUNK_SETTINGS, PlanOptions, make_plan
    from policyd.planner.reader import filled, id_ranges, json_ids, lookup_ids
    from policyd.planner.run import site_rules
    from policyd.rules.ir import time_value
    from policyd.site import Site
    from policyd.stations.config import load_site_config

    site = Site(load_site_config(CONFIG))
    engine = site.reader
    at = time_value(AT, site.tz)
    began = time.perf_counter()
    rules = site_rules(site.config)
    rules_s = time.perf_counter() - began

    statements: list[Statement] = []

    def capture(_c: Any, _cur: Any, sql: str, params: Any, context: Any, _many: bool) -> None:
        statements.append((sql, params, _file_query(context)))

    reader = planner_engine.read_batches

    def read_recorded(process: Any, request: Any, *rest: Any) -> Any:
        """The reader process's statements, as it runs them: its file query (on
        PostgreSQL an id range at a time, with the settings it runs them under), and
        each batch's lookups with that batch's ids."""
        query, chunks = request["query"], request.get("chunks")
        if chunks is None:
            statements.append((query["sql"], query["params"], True))
        else:
            with engine.connect() as conn:
                bounds = chunks["bounds"]
                low, high, files = conn.exec_driver_sql(bounds["sql"], bounds["params"]).one()
            statements.extend((sql, {}, False) for sql in chunks["settings"])
            for start, end in id_ranges(low, high, chunks["files"], files):
                params = filled(query, chunk_low=start, chunk_high=end)
                statements.append((query["sql"], params, True))
            # the lookups run on a connection without them
            statements.extend((f"RESET {name}", {}, False) for name in PG_CHUNK_SETTINGS)
        for batch, found in reader(process, request, *rest):
            for lookup in request["lookups"]:
                ids = lookup_ids(lookup, batch)
                if not ids:
                    continue  # the reader skips it
                listed = json_ids(ids) if isinstance(lookup["params"], list) else ids
                statements.append((lookup["sql"], filled(lookup, ids=listed), False))
            yield batch, found

    planner_engine.read_batches = read_recorded
    event.listen(engine, "before_cursor_execute", capture)
    try:
        began, cpu = time.perf_counter(), time.process_time()
        plan = make_plan(site.config, engine, rules, PlanOptions(at, json=True))
        with open(out, "wb") as handle:
            plan.write_json(handle)
        plan_s, cpu_s = time.perf_counter() - began, time.process_time() - cpu
    finally:
        event.remove(engine, "before_cursor_execute", capture)
        planner_engine.read_batches = reader
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "rules_s": rules_s,
        "plan_s": plan_s,
        "cpu_s": cpu_s,
        "rss_mb": peak_rss_mb(),
        # the reader process, when the plan started one (ru_maxrss is in KiB)
        "reader_cpu_s": children.ru_utime + children.ru_stime,
        "reader_rss_mb": children.ru_maxrss / 1024,
        "kinds": dict(Counter(a.kind for a in plan.actions)),
        "files_acted_on": len({(a.experiment, a.file) for a in plan.actions if a.file}),
        "blocked": len(plan.blocked),
        "errors": len(plan.errors),
        "statements": statements,
    }


def _replay(dbapi: Any, statement: Statement, name: str, server_side: bool) -> tuple[float, int]:
    """Seconds and rows of one statement, every row read with fetchmany."""
    from policyd.planner.engine import BATCH

    sql, params, _ = statement
    began = time.perf_counter()
    cursor = dbapi.cursor(name) if server_side else dbapi.cursor()
    cursor.execute(sql, params)
    rows = 0
    # a server-side cursor has a description only once fetched; a client-side one
    # without a description ran a statement that returns no rows (SET)
    while (server_side or cursor.description is not None) and (chunk := cursor.fetchmany(BATCH)):
        rows += len(chunk)
    cursor.close()
    return time.perf_counter() - began, rows


def floor_job(url: str, statements: list[Statement]) -> dict[str, Any]:
    """Replay `statements` on a bare DBAPI connection (file queries through a
    server-side cursor on PostgreSQL, as the planner's stream_results does). On
    PostgreSQL the file queries are replayed once more with JIT compilation off: their
    expressions are large enough that compiling them can cost more than running them."""
    from policyd.catalog.db import open_catalog

    engine = open_catalog(url, create=False)
    pg = engine.dialect.name == "postgresql"
    raw = engine.raw_connection()
    dbapi = raw.driver_connection
    floor_s = other_s = floor_cpu = 0.0
    candidates = 0
    slowest: list[tuple[float, str]] = []
    for index, statement in enumerate(statements):
        cpu = time.process_time()
        elapsed, rows = _replay(dbapi, statement, f"floor{index}", pg and statement[2])
        if statement[2]:
            floor_s += elapsed
            floor_cpu += time.process_time() - cpu
            candidates += rows
        else:
            other_s += elapsed
        slowest.append((elapsed, " ".join(statement[0].split())[:110]))
    no_jit_s = None
    if pg:
        with dbapi.cursor() as cursor:
            cursor.execute("SET jit = off")
        file_queries = [(i, s) for i, s in enumerate(statements) if s[2]]
        no_jit_s = sum(_replay(dbapi, s, f"nojit{i}", True)[0] for i, s in file_queries)
    raw.close()
    slowest.sort(reverse=True)
    return {
        "floor_s": floor_s,
        "floor_cpu_s": floor_cpu,
        "floor_no_jit_s": no_jit_s,
        "candidates": candidates,
        "all_sql_s": floor_s + other_s,
        "statements": len(statements),
        "slowest": slowest[:4],
        "rss_mb": peak_rss_mb(),
    }


def in_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run `fn` in a fresh spawned interpreter, so its memory is measured alone."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


# ---- in the bench process


@dataclass
class Figures:
    """One database's results."""

    name: str
    files: int
    imports_s: list[float] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)
    floor: dict[str, Any] = field(default_factory=dict)
    steady: dict[str, Any] = field(default_factory=dict)
    steady_floor: dict[str, Any] = field(default_factory=dict)


def log(message: str) -> None:
    """Progress on stderr, so stdout holds the figures alone."""
    print(message, file=sys.stderr, flush=True)


def generate(files: int, share: float, path: Path) -> None:
    """The catalog at `path` (kept from an earlier run in --keep DIR: generating 1M
    files takes minutes and the output is a pure function of the arguments)."""
    if path.exists():
        log(f"reusing {path}")
        return
    per_experiment = math.ceil(files / EXPERIMENTS)
    log(f"generating {path} ...")
    subprocess.run(
        [
            sys.executable,
            str(HERE / "gen_catalog.py"),
            *("--files", str(files), "--files-per-experiment", str(per_experiment)),
            *("--needing-action", str(share), *SHAPE, "--out", str(path)),
        ],
        check=True,
        stderr=subprocess.DEVNULL,
    )


def import_catalog(source: Path, url: str) -> float:
    """`policyd catalog import jsonl` into `url` with the examples/aps config; seconds.

    On PostgreSQL the tables are then vacuumed and analyzed, as autovacuum does on a
    live server after a bulk load (since PostgreSQL 13 inserts alone start a vacuum):
    without statistics (autovacuum may be off, as on a test server) PostgreSQL plans
    the candidate query's subqueries as repeated scans, and a plan of 100,000 files had
    not returned its first row after 20 minutes; without a vacuum no page is marked
    all-visible, so a count of a location's replicas reads the table where it would
    read an index (0.10 s against 0.035 s per fixity rule at 1M files)."""
    env = {**os.environ, "POLICYD_CONFIG": str(CONFIG), "POLICYD_CATALOG": url}
    began = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "policyd", "catalog", "import", "jsonl", str(source)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    seconds = time.perf_counter() - began
    if url.startswith("postgresql"):
        engine = create_engine(url, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("VACUUM ANALYZE"))
            conn.execute(text("CHECKPOINT"))
        engine.dispose()
    os.sync()  # the import's writes on disk, not written back while the plan is timed
    return seconds


def _median(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return sorted(runs, key=lambda run: run[key])[len(runs) // 2]


def measure(figures: Figures, catalogs: dict[str, tuple[Path, str]], work: Path, runs: int) -> None:
    """Import (unless reused), then plan and replay the floor `runs` times, in turn, for
    both catalogs. The figures are the median plan's and the median floor's (the
    machine's speed varies from one second to the next); the peak RSS is the highest."""
    for kind, (source, url) in catalogs.items():
        reused = url.startswith("sqlite") and Path(make_url(url).database or "").exists()
        if not reused:
            log(f"{figures.name}: importing {source.name} ...")
            figures.imports_s.append(import_catalog(source, url))
        plans: list[dict[str, Any]] = []
        floors: list[dict[str, Any]] = []
        for run in range(1, runs + 1):
            log(f"{figures.name}: planning the {kind} catalog ({run} of {runs}) ...")
            plans.append(in_child(plan_job, url, str(work / f"plan-{figures.name}-{kind}.json")))
            floors.append(in_child(floor_job, url, plans[-1].pop("statements")))
        plan = {**_median(plans, "plan_s"), "rss_mb": max(p["rss_mb"] for p in plans)}
        plan["runs"] = [(p["plan_s"], f["floor_s"]) for p, f in zip(plans, floors, strict=True)]
        floor = _median(floors, "floor_s")
        if kind == "actions":
            figures.plan, figures.floor = plan, floor
        else:
            figures.steady, figures.steady_floor = plan, floor


def pg_databases(kinds: list[str]) -> tuple[Any, dict[str, str]]:
    """Fresh PostgreSQL databases, one per catalog: the admin engine and their URLs."""
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    urls: dict[str, str] = {}
    with admin.connect() as conn:
        for kind in kinds:
            name = f"policyd_bench_{kind}_{os.getpid()}"
            conn.execute(text(f'CREATE DATABASE "{name}"'))
            urls[kind] = make_url(PG_ADMIN).set(database=name).render_as_string(False)
    return admin, urls


def drop_pg(admin: Any, urls: dict[str, str]) -> None:
    """Drop the bench's databases, even with a child still connected (FORCE)."""
    with admin.connect() as conn:
        for url in urls.values():
            conn.execute(text(f'DROP DATABASE IF EXISTS "{make_url(url).database}" WITH (FORCE)'))
    admin.dispose()


def _seconds(value: float | None) -> str:
    """A time, or "-" for a figure the database does not have."""
    return "-" if value is None else f"{value:.2f}"


def _reader(value: float, digits: str = "2") -> str:
    """A reader process's figure, or "-" without one (a small catalog)."""
    return f"{value:.{digits}f}" if value else "-"


def check(value: float, goal: float) -> str:
    """The word printed next to a figure that has a goal."""
    return "ok" if value <= goal else "OVER"


def _runs(runs: list[tuple[float, float]]) -> str:
    return ", ".join(f"{plan:.2f}/{floor:.2f}" for plan, floor in runs)


def rows_for(f: Figures) -> list[tuple[str, str, str]]:
    """(figure, value, goal) rows of one database."""
    p, fl, s = f.plan, f.floor, f.steady
    ratio = p["plan_s"] / fl["floor_s"] if fl["floor_s"] else math.inf
    actions = sum(p["kinds"].values())
    kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(p["kinds"].items()))
    steady_actions = sum(s["kinds"].values())
    steady_kinds = ", ".join(f"{k} {v:,}" for k, v in sorted(s["kinds"].items())) or "none"
    acted = p["files_acted_on"]
    goal_acted = f"{NEEDING_ACTION:.0%} of files"
    return [
        ("catalog import, s", " + ".join(f"{t:.1f}" for t in f.imports_s) or "reused", ""),
        ("rules check, s", f"{p['rules_s']:.2f}", ""),
        ("plan (make_plan + write_json), s", f"{p['plan_s']:.2f}", f"<= {GOAL_PLAN_S:g} s"),
        ("  its CPU in the bench process, s", f"{p['cpu_s']:.2f}", ""),
        ("  CPU of its reader process, s", _reader(p["reader_cpu_s"]), ""),
        ("floor (the file queries alone), s", f"{fl['floor_s']:.2f}", ""),
        ("  its CPU in the bench process, s", f"{fl['floor_cpu_s']:.2f}", ""),
        ("  with JIT off (PostgreSQL only), s", _seconds(fl["floor_no_jit_s"]), ""),
        ("plan / floor", f"{ratio:.2f}  {check(ratio, GOAL_RATIO)}", f"<= {GOAL_RATIO:g}"),
        ("  plan / floor of each run, s", _runs(p["runs"]), ""),
        ("all SQL of the plan, s", f"{fl['all_sql_s']:.2f} ({fl['statements']} stmts)", ""),
        ("Python not overlapped (plan - all SQL), s", f"{p['plan_s'] - fl['all_sql_s']:.2f}", ""),
        ("files/s (catalog files)", f"{f.files / p['plan_s']:,.0f}", ""),
        ("rows of the file queries", f"{fl['candidates']:,}", ""),
        ("actions", f"{actions:,}", ""),
        ("  by kind", kinds, ""),
        ("files acted on", f"{acted:,} ({acted / f.files:.2%})", goal_acted),
        ("blocked / errors", f"{p['blocked']:,} / {p['errors']:,}", ""),
        ("peak RSS (plan), MB", f"{p['rss_mb']:.0f}  {check(p['rss_mb'], GOAL_RSS_MB)}", "<= 500"),
        ("  peak RSS of its reader process, MB", _reader(p["reader_rss_mb"], "0"), ""),
        ("peak RSS (floor), MB", f"{fl['rss_mb']:.0f}", ""),
        (
            "steady-state plan, s",
            f"{s['plan_s']:.2f}  {check(s['plan_s'], GOAL_STEADY_S)}",
            f"<= {GOAL_STEADY_S:g} s",
        ),
        ("  its CPU in the bench process, s", f"{s['cpu_s']:.2f}", ""),
        ("  plan / floor of each run, s", _runs(s["runs"]), ""),
        (
            "steady-state floor / all SQL, s",
            f"{f.steady_floor['floor_s']:.2f} / {f.steady_floor['all_sql_s']:.2f}",
            "",
        ),
        (
            "  floor with JIT off (PostgreSQL only), s",
            _seconds(f.steady_floor["floor_no_jit_s"]),
            "",
        ),
        ("steady-state actions", f"{steady_actions:,} ({steady_kinds})", "no file action"),
        ("steady-state files acted on", f"{s['files_acted_on']:,}", "0"),
    ]


def report(results: list[Figures]) -> None:
    """The figures side by side, one column per database, then each database's
    slowest statements: where to look first."""
    table = [rows_for(f) for f in results]
    names = [f.name for f in results]
    width = max(len(r[0]) for r in table[0])
    columns = [max(len(r[1]) for r in rows) for rows in table]
    head = "  ".join(f"{n:<{w}}" for n, w in zip(names, columns, strict=True))
    print(f"\n{'figure':<{width}}  {head}  goal")
    for i, (label, _, goal) in enumerate(table[0]):
        values = "  ".join(f"{rows[i][1]:<{w}}" for rows, w in zip(table, columns, strict=True))
        print(f"{label:<{width}}  {values}  {goal}")
    for f in results:
        print(f"\nslowest statements of the plan on {f.name} (replayed):")
        for seconds, sql in f.floor["slowest"]:
            print(f"  {seconds:7.2f} s  {sql}")


def main() -> None:
    """Generate, import, plan and replay on SQLite, then PostgreSQL; print the table."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1_000_000, metavar="N")
    parser.add_argument("--skip-pg", action="store_true", help="SQLite only")
    parser.add_argument(
        "--runs", type=int, default=3, metavar="N", help="plans and floors per catalog"
    )
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="keep the catalogs and plans in DIR (and reuse its jsonl and SQLite files)",
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    work = args.keep or Path(tempfile.mkdtemp(prefix="policyd-plan-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    sources = {
        "actions": work / f"catalog-{args.files}-actions.jsonl",
        "steady": work / f"catalog-{args.files}-steady.jsonl",
    }
    results: list[Figures] = []
    try:
        generate(args.files, NEEDING_ACTION, sources["actions"])
        generate(args.files, 0.0, sources["steady"])
        sqlite = Figures("SQLite", args.files)
        measure(
            sqlite,
            {
                k: (src, f"sqlite:///{work / f'catalog-{args.files}-{k}.db'}")
                for k, src in sources.items()
            },
            work,
            args.runs,
        )
        results.append(sqlite)
        if not args.skip_pg:
            admin, urls = pg_databases(list(sources))
            try:
                pg = Figures("PostgreSQL", args.files)
                measure(pg, {k: (sources[k], urls[k]) for k in sources}, work, args.runs)
                results.append(pg)
            finally:
                drop_pg(admin, urls)
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    load = f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after"
    print(f"\n{args.files:,} files, examples/aps rules, --at {AT}; {load} ({os.cpu_count()} CPUs)")
    report(results)


if __name__ == "__main__":
    main()
