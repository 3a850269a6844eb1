"""A real site for the apply tests: real bytes on a DAQ folder, cataloged with their md5s.

The planner tests build catalog rows that no file backs; `apply` reads and writes
storage, so here every cataloged file is written on disk first (its mode and mtime
set), and the catalog learns of it the way a site's would: `policyd catalog import
jsonl`. The checks at the end (`storage_files`, `verified_mismatches`,
`done_events`) read storage and the catalog directly, not through policyd, so a
wrong answer from policyd cannot also make the check pass.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, create_engine, select, text

from policyd.catalog.schema import audit_events
from policyd.cli import main
from tests.catalog.helpers import catalog_replicas

AT = "2026-12-01T08:00:00Z"
"""Every plan is made `--at` this time, so a plan does not depend on the wall clock."""

CONFIG = """\
site: t
timezone: UTC
catalog: {catalog}
locations:
  daq: {{url: "file:storage/daq", tier: daq, site: beamline, capacity: 1 GB}}
  disk: {{url: "file:storage/disk", tier: disk, site: central, capacity: 10 GB}}
  tape: {{url: "file:storage/tape", tier: tape, site: central, capacity: 100 GB}}
retry: {{attempts: 2, backoff: 0.05 s, max_backoff: 0.1 s}}
rules: ["rules/*.policy"]
{extra}"""

RULES = """\
rule layout
  place files where file.ext == "h5"
  on disk
  at "{station}/{experiment.start:%Y-%m}/{experiment.name}/{file.path}"

rule archive-old
  archive files where age(experiment.end) > 90 days
  to tape
  then release from daq
"""


@dataclass(frozen=True)
class Experiment:
    name: str
    start: str
    end: str | None
    station: str = "8IDI"

    def record(self) -> dict[str, Any]:
        return {
            "record": "experiment",
            "name": self.name,
            "station": self.station,
            "startDate": self.start,
            "endDate": self.end,
        }


OLD = Experiment("Old-Jan26", "2026-01-05T08:00:00Z", "2026-01-09T20:00:00Z")
NEW = Experiment("New-Nov26", "2026-11-20T08:00:00Z", None)


@dataclass(frozen=True)
class SiteFile:
    experiment: Experiment
    path: str
    data: bytes
    mode: int = 0o640
    mtime_ns: int = 1_767_600_000_123_456_789
    md5_known: bool = True
    also_on: tuple[str, ...] = ()
    """Locations that already hold a verified copy at the layout path."""

    @property
    def md5(self) -> str:
        return hashlib.md5(self.data).hexdigest()

    @property
    def daq_path(self) -> str:
        """Where the DAQ wrote it: `EXPERIMENT/PATH` on the daq location."""
        return f"{self.experiment.name}/{self.path}"

    @property
    def layout_path(self) -> str:
        """The layout path RULES give it, worked out here independently of the planner."""
        e = self.experiment
        if self.path.endswith(".h5"):
            return f"{e.station}/{e.start[:7]}/{e.name}/{self.path}"
        return f"{e.station}/{e.name}/{self.path}"

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "record": "file",
            "experimentName": self.experiment.name,
            "experimentFilePath": self.path,
            "fileSize": len(self.data),
            "fileModificationTime": self.mtime_ns / 1e9,
            "replicas": [{"location": "daq", "path": self.daq_path}]
            + [
                {"location": loc, "path": self.layout_path, "verified": True}
                for loc in self.also_on
            ],
        }
        if self.md5_known:
            out["md5Sum"] = self.md5
        return out


@dataclass
class Site:
    root: Path
    catalog: str
    files: list[SiteFile] = field(default_factory=list)
    _engine: Engine | None = None

    @property
    def config(self) -> Path:
        return self.root / "policyd.yaml"

    def storage(self, location: str) -> Path:
        return self.root / "storage" / location

    def engine(self) -> Engine:
        """The test's own connection to the catalog (one per site; `close` ends it)."""
        if self._engine is None:
            self._engine = create_engine(self.catalog)
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()

    def write(self, site_files: Iterable[SiteFile]) -> list[SiteFile]:
        """Put files on the DAQ folder with their bytes, mode and mtime, and catalog them."""
        batch = list(site_files)
        for f in batch:
            put_file(self.storage("daq") / f.daq_path, f.data, f.mode, f.mtime_ns)
            for location in f.also_on:
                put_file(self.storage(location) / f.layout_path, f.data, f.mode, f.mtime_ns)
        records = [e.record() for e in {f.experiment: None for f in batch}]
        records += [f.record() for f in batch]
        source = self.root / f"import-{len(self.files)}.jsonl"
        source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        result = cli("catalog", "import", "jsonl", source, "-c", self.config)
        assert result.exit_code == 0, result.output
        self.files += batch
        return batch

    def plan(self, name: str = "plan.json") -> Path:
        out = self.root / name
        result = cli("plan", "-c", self.config, "--at", AT, "--out", out)
        assert result.exit_code == 0, result.output
        return out

    def apply(self, plan: Path, *options: str) -> Result:
        return cli("apply", plan, "-c", self.config, *options)

    def clone(self, root: Path) -> Site:
        """A copy of this SQLite site (storage, catalog, plans) at `root`: its plans stay
        valid there, since the copied catalog has the same fingerprint."""
        shutil.copytree(self.root, root, symlinks=True)
        catalog = f"sqlite:///{root / 'catalog.db'}"
        config = root / "policyd.yaml"
        config.write_text(config.read_text().replace(self.catalog, catalog))
        return Site(root, catalog, list(self.files))


@contextmanager
def mounted(kind: str, folder: Path, *options: str) -> Iterator[Path]:
    """`folder` as a fresh file system of `kind` (ramfs, tmpfs) for the block, unmounted
    after. Mounting needs root: elsewhere the test skips, unless POLICYD_REQUIRE_MOUNT=1
    (CI runs as root and sets it), where a refused mount fails the test."""
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", kind, *options, kind, str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        problem = f"cannot mount a {kind} at {folder}: {done.stderr.strip()}"
        if os.environ.get("POLICYD_REQUIRE_MOUNT") == "1":
            pytest.fail(f"POLICYD_REQUIRE_MOUNT=1 but {problem}")
        pytest.skip(problem)
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def put_file(path: Path, data: bytes, mode: int, mtime_ns: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    os.utime(path, ns=(mtime_ns, mtime_ns))


def make_site(
    root: Path, catalog: str, *, rules: str = RULES, extra: str = "safety: {min_copies: 1}\n"
) -> Site:
    root.mkdir(parents=True, exist_ok=True)
    (root / "policyd.yaml").write_text(CONFIG.format(catalog=catalog, extra=extra))
    (root / "rules").mkdir()
    (root / "rules" / "site.policy").write_text(rules)
    for name in ("daq", "disk", "tape"):
        (root / "storage" / name).mkdir(parents=True)
    return Site(root, catalog)


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def sample_files(count: int, seed: int, experiment: Experiment, prefix: str) -> list[SiteFile]:
    """`count` small files of an experiment, h5 and dat mixed, each with its own bytes."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        ext = "h5" if i % 3 else "dat"
        out.append(
            SiteFile(
                experiment,
                f"{prefix}{i // 50:02d}/f{i:04d}.{ext}",
                rng.randbytes(rng.randint(200, 6000)),
                mode=rng.choice((0o640, 0o644, 0o600, 0o664)),
                mtime_ns=1_767_600_000_000_000_000 + rng.randint(0, 10**15),
            )
        )
    return out


# ---- what is on storage and in the catalog, read directly


def storage_files(site: Site) -> dict[tuple[str, str], str]:
    """(location, relative path) -> md5 of every regular file under each location."""
    out = {}
    for location in ("daq", "disk", "tape"):
        root = site.storage(location)
        for path in root.rglob("*"):
            if path.is_file():
                out[(location, path.relative_to(root).as_posix())] = hashlib.md5(
                    path.read_bytes()
                ).hexdigest()
    return out


def expected_storage(site: Site) -> dict[tuple[str, str], str]:
    """Where RULES put every file once applied: h5 on disk at the layout path, old files
    on tape and gone from daq, new files kept on daq."""
    out = {}
    for f in site.files:
        if f.path.endswith(".h5"):
            out[("disk", f.layout_path)] = f.md5
        if f.experiment.end is not None:
            out[("tape", f.layout_path)] = f.md5
        else:
            out[("daq", f.daq_path)] = f.md5
    return out


def verified_mismatches(site: Site, engine: Engine) -> dict[tuple[str, str, str], str]:
    """Replicas recorded verified whose bytes on storage are missing or differ from the
    file's md5 (spec/rules.md section 9, invariant 2), with what was found."""
    bad = {}
    for key, rep in catalog_replicas(engine).items():
        if rep["state"] != "verified":
            continue
        path = site.storage(rep["location"]) / rep["path"]
        actual = hashlib.md5(path.read_bytes()).hexdigest() if path.is_file() else None
        if actual != rep["md5"]:
            bad[key] = f"on storage {actual}, catalog {rep['md5']}"
    return bad


def temp_leftovers(site: Site) -> list[Path]:
    return [p for p in site.root.joinpath("storage").rglob("*") if ".policyd-tmp" in p.name]


def ledger_events(engine: Engine, event: str | None = None) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        query = select(audit_events).order_by(audit_events.c.seq)
        if event is not None:
            query = query.where(audit_events.c.event == event)
        return [dict(r) for r in conn.execute(query).mappings()]


def done_events(engine: Engine, plan_id: str | None = None) -> Counter[str]:
    """How many `done` events each action id has (of one plan, or all)."""
    return Counter(
        e["action_id"]
        for e in ledger_events(engine, "done")
        if plan_id is None or e["plan_id"] == plan_id
    )


def count_events(engine: Engine, event: str | None = None, action_id: str | None = None) -> int:
    """Ledger events so far (of one kind, of one action), read while a child writes."""
    query = "SELECT count(*) FROM audit_events WHERE (:e IS NULL OR event = :e)"
    query += " AND (:a IS NULL OR action_id = :a)"
    with engine.connect() as conn:
        return int(conn.execute(text(query), {"e": event, "a": action_id}).scalar_one())


def action_states(engine: Engine) -> Counter[str]:
    with engine.connect() as conn:
        return Counter(s for (s,) in conn.execute(text("SELECT state FROM actions")))


# ---- apply in a child process, to be killed


@dataclass
class Child:
    """A `policyd apply` running in another process: exec'd (`start_apply`) or forked
    from this one (`fork_apply`), which skips the child's imports."""

    pid: int
    popen: subprocess.Popen[bytes] | None = None
    returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            if self.popen is not None:
                self.returncode = self.popen.poll()
            else:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode


def child_env() -> dict[str, str]:
    """The child reads its config and catalog from -c only, never from this environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYD_")}
    env["PYTHONPATH"] = str(Path(__file__).parents[2])
    return env


def start_apply(site: Site, plan: Path, *options: str) -> Child:
    """`python -m policyd apply PLAN -c CONFIG` in a new process, its output in apply.log."""
    with (site.root / "apply.log").open("ab") as log:
        popen = subprocess.Popen(
            [sys.executable, "-m", "policyd", "apply", str(plan), "-c", str(site.config), *options],
            env=child_env(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Child(popen.pid, popen)


def fork_apply(site: Site, plan: Path, *options: str) -> Child:
    """The same command in a forked copy of this process (no other thread runs here, so
    the fork is safe), its output in apply.log; it ends with the command's exit code."""
    assert threading.active_count() == 1, "fork with other threads running"
    site.close()
    log = os.open(site.root / "apply.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    pid = os.fork()
    if pid:
        os.close(log)
        return Child(pid)
    code = 70
    try:
        os.dup2(log, 1)
        os.dup2(log, 2)
        sys.stdout = sys.stderr = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
        main(["apply", str(plan), "-c", str(site.config), *options])
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os._exit(code)


def kill_after(
    child: Child,
    engine: Engine,
    events: int,
    *,
    event: str | None = None,
    action_id: str | None = None,
    extra_delay: float = 0.0,
) -> int:
    """SIGKILL the child `extra_delay` s after the ledger holds `events` events (of kind
    `event`, of action `action_id`); the number of such events when it died (it may
    have finished first: its returncode says)."""
    while child.poll() is None and count_events(engine, event, action_id) < events:
        time.sleep(0.005)
    time.sleep(extra_delay)
    if child.poll() is None:
        os.kill(child.pid, signal.SIGKILL)
    child.wait()
    return count_events(engine, event, action_id)
