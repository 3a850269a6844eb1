#!/usr/bin/env python3
"""Import rate and peak memory of `policyd catalog import jsonl` on SQLite and PostgreSQL.

Generates a catalog with bench/gen_catalog.py (cached under bench/out/), then runs the
real command in a fresh site per database, each in its own process so its peak RSS is
its own. Prints lines/s and peak RSS, next to a bare stdlib sqlite3 upsert of the same
files and replicas (the floor the issue measures against).

Example:
  python bench/import.py --files 1000000
  python bench/import.py --files 200000 --skip-pg
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"
PG_ADMIN = os.environ.get("POLICYD_TEST_PG", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")

CONFIG = """\
site: bench
timezone: UTC
catalog: sqlite:///catalog.db
locations:
  daq-1id: {url: "file:storage/daq-1id", tier: daq, capacity: 100 TB}
  daq-8idi: {url: "file:storage/daq-8idi", tier: daq, capacity: 100 TB}
  daq-6bm: {url: "file:storage/daq-6bm", tier: daq, capacity: 100 TB}
  daq-2bm: {url: "file:storage/daq-2bm", tier: daq, capacity: 100 TB}
  voyager: {url: "file:storage/voyager", tier: disk, capacity: 1.5 PB}
  tape: {url: "file:storage/tape", tier: tape, capacity: 10 PB}
"""


def catalog_file(files: int) -> Path:
    OUT.mkdir(exist_ok=True)
    path = OUT / f"catalog-{files}.jsonl"
    if not path.exists():
        print(f"generating {path} ...", file=sys.stderr)
        subprocess.run(
            [
                sys.executable,
                str(HERE / "gen_catalog.py"),
                "--files",
                str(files),
                "--out",
                str(path),
            ],
            check=True,
        )
    return path


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, int, int]:
    """Wall seconds, peak RSS in MB and exit status of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    return time.perf_counter() - start, usage.ru_maxrss // 1024, os.waitstatus_to_exitcode(status)


def policyd_import(source: Path, catalog_url: str, workdir: Path) -> tuple[float, int, int]:
    (workdir / "policyd.yaml").write_text(CONFIG)
    env = {
        **os.environ,
        "POLICYD_CONFIG": str(workdir / "policyd.yaml"),
        "POLICYD_CATALOG": catalog_url,
    }
    policyd = [sys.executable, "-m", "policyd", "catalog", "import", "jsonl", str(source)]
    return timed(policyd, env)


def bare_sqlite(source: Path, workdir: Path) -> float:
    """The floor: stdlib sqlite3, executemany upserts of files then replicas, no validation."""
    db = sqlite3.connect(workdir / "bare.db")
    db.executescript(
        """
        PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
        CREATE TABLE f (id INTEGER PRIMARY KEY, e TEXT, p TEXT, size INT, md5 TEXT, m REAL,
                        meta TEXT, UNIQUE (e, p));
        CREATE TABLE r (id INTEGER PRIMARY KEY, f INT, loc TEXT, path TEXT, state TEXT,
                        UNIQUE (f, loc));
        """
    )
    start = time.perf_counter()
    batch: list[dict] = []

    def flush() -> None:
        db.executemany(
            "INSERT INTO f (e, p, size, md5, m, meta) VALUES (?,?,?,?,?,?) "
            "ON CONFLICT (e, p) DO UPDATE SET size=excluded.size, md5=excluded.md5, "
            "m=excluded.m, meta=excluded.meta",
            [
                (
                    r["experimentName"],
                    r["experimentFilePath"],
                    r["fileSize"],
                    r["md5Sum"],
                    r["fileModificationTime"],
                    r.get("sample"),
                )
                for r in batch
            ],
        )
        ids = {}
        for r in batch:
            ids[(r["experimentName"], r["experimentFilePath"])] = db.execute(
                "SELECT id FROM f WHERE e=? AND p=?", (r["experimentName"], r["experimentFilePath"])
            ).fetchone()[0]
        db.executemany(
            "INSERT INTO r (f, loc, path, state) VALUES (?,?,?,?) ON CONFLICT (f, loc) DO UPDATE "
            "SET path=excluded.path, state=excluded.state",
            [
                (
                    ids[(r["experimentName"], r["experimentFilePath"])],
                    rep["location"],
                    rep["path"],
                    "verified" if rep.get("verified") else "present",
                )
                for r in batch
                for rep in r["replicas"]
            ],
        )
        db.commit()
        batch.clear()

    with source.open("rb") as fh:
        for line in fh:
            record = orjson.loads(line)
            if record.get("record") == "file":
                batch.append(record)
                if len(batch) >= 2000:
                    flush()
    if batch:
        flush()
    db.close()
    return time.perf_counter() - start


def pg_database() -> tuple[str, object] | None:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        name = f"policyd_bench_{uuid.uuid4().hex[:8]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:
        print(
            f"PostgreSQL not reachable ({str(exc).splitlines()[0]}); skipping it", file=sys.stderr
        )
        return None
    return make_url(PG_ADMIN).set(database=name).render_as_string(hide_password=False), (
        admin,
        name,
    )


def drop_pg(handle: object) -> None:
    from sqlalchemy import text

    admin, name = handle  # type: ignore[misc]
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument("--skip-bare", action="store_true")
    args = parser.parse_args()
    source = catalog_file(args.files)
    lines = sum(1 for _ in source.open("rb"))
    print(f"input: {source.name}, {lines:,} lines, {source.stat().st_size / 1e6:.0f} MB")
    rows = []
    with tempfile.TemporaryDirectory(prefix="policyd-bench-") as tmp:
        work = Path(tmp)
        if not args.skip_bare:
            seconds = bare_sqlite(source, work)
            rows.append(("bare sqlite3 upsert (floor)", seconds, None, 0))
        site = work / "sqlite"
        site.mkdir()
        seconds, rss, code = policyd_import(source, f"sqlite:///{site / 'catalog.db'}", site)
        rows.append(("policyd import, SQLite", seconds, rss, code))
        if not args.skip_pg:
            pg = pg_database()
            if pg is not None:
                url, handle = pg
                site = work / "pg"
                site.mkdir()
                try:
                    seconds, rss, code = policyd_import(source, url, site)
                    rows.append(("policyd import, PostgreSQL", seconds, rss, code))
                finally:
                    drop_pg(handle)
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'run':32} {'seconds':>9} {'lines/s':>10} {'peak RSS':>9} exit")
    for name, seconds, rss, code in rows:
        rss_text = f"{rss} MB" if rss is not None else "-"
        print(f"{name:32} {seconds:9.1f} {lines / seconds:10,.0f} {rss_text:>9} {code}")


if __name__ == "__main__":
    main()
