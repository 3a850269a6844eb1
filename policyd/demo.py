"""`policyd demo`: a throw-away beamline site, built for real and run through policyd.

The site is deterministic (fixed seed, fixed dates) so two demos show the same
figures. It is built as a list of steps; each capability that lands adds its step
(check, plan, apply, report) so the demo always shows what policyd can do today.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

from policyd.catalog.importers import ImportReport, default_layout_path, import_records
from policyd.catalog.scan import ScanReport, scan_location
from policyd.catalog.stats import collection_stats
from policyd.site import Site, open_site
from policyd.units import format_size

STATIONS = ("8IDI", "1ID", "6BM", "2BM")
SURNAMES = ("Smith", "Wilkinson", "Jones", "Brown", "Taylor", "Evans", "Davies", "Wilson")
TYPES = {"8IDI": "XPCS", "1ID": "HEDM", "6BM": "EDD", "2BM": "TOMO"}
BASE = datetime(2026, 11, 1, 8, 0, tzinfo=UTC)

CONFIG = """\
# A demo site built by `policyd demo`: three storage locations in local folders.
site: demo
timezone: America/Chicago
catalog: sqlite:///catalog.db
locations:
  daq:  {url: "file:storage/daq", tier: daq, site: beamline, capacity: 2 GB}
  disk: {url: "file:storage/disk", tier: disk, site: central, capacity: 20 GB}
  tape: {url: "file:storage/tape", tier: tape, site: central, capacity: 200 GB}
quotas:
  disk: {8IDI: 5 GB, 1ID: 5 GB}
notify:
  ops: {log: true}
safety: {min_copies: 1, max_delete_per_run: 1 GB}
rules: ["rules/*.policy", "rules/*.yaml"]
workflows: ["workflows/*.yaml"]
stations: ["stations/*.yaml"]
"""


RULES = """\
# The demo site's policies: see docs/rules.md for the language.
rule layout
  place files where file.ext in ["h5", "imm"]
  on disk
  at "{station}/{experiment.start:%Y-%m}/{experiment.name}/{file.path}"

rule two-copies
  replicate files where experiment.end is null or experiment.end > now - 180 days
  copies 2 on disk, tape

rule archive-old
  archive files where age(experiment.end) > 90 days
  to tape
  then release from daq

rule scratch
  expire files where file.path like "scratch/**" and age(file.modified) > 30 days

rule keep-published
  protect files where experiment.meta.doi is not null

rule quota
  alarm when usage("disk") > 80% notify ops severity warning

rule fixity
  verify files on tape every 365 days sample 2%
"""


@dataclass
class Experiment:
    name: str
    station: str
    start: datetime
    end: datetime | None
    users: list[str]
    home: str  # the location its files lie on: daq while running, disk then, tape when old

    def record(self) -> dict[str, object]:
        return {
            "record": "experiment",
            "name": self.name,
            "station": self.station,
            "experimentType": TYPES[self.station],
            "startDate": self.start.isoformat(),
            "endDate": self.end.isoformat() if self.end else None,
            "users": self.users,
            "description": f"Demo {TYPES[self.station]} experiment at {self.station}",
        }


@dataclass
class DemoSite:
    root: Path
    experiments: list[Experiment] = field(default_factory=list)
    files_written: int = 0
    bytes_written: int = 0
    reports: list[ImportReport | ScanReport] = field(default_factory=list)
    site: Site | None = None

    @property
    def config_path(self) -> Path:
        return self.root / "policyd.yaml"


def plan_experiments(count: int, rng: random.Random) -> list[Experiment]:
    """Oldest first: the old ones are archived on tape, the last one is still running."""
    result = []
    for i in range(count):
        station = STATIONS[i % len(STATIONS)]
        start = BASE - timedelta(days=30 * (count - i) * 2)
        running = i == count - 1
        end = None if running else start + timedelta(days=rng.randint(3, 10))
        age = (BASE - end).days if end else 0
        home = "daq" if running or age < 30 else ("tape" if age > 180 else "disk")
        month = start.strftime("%b%y")
        result.append(
            Experiment(
                name=f"{SURNAMES[i % len(SURNAMES)]}-{month}",
                station=station,
                start=start,
                end=end,
                users=[f"d{rng.randint(10000, 99999)}" for _ in range(rng.randint(2, 4))],
                home=home,
            )
        )
    return result


def file_paths(count: int) -> list[str]:
    kinds = ("pix/macimg_{:06d}.tif", "scan{:04d}/frame.h5", "raw/xpcs_{:04d}.imm")
    paths = [kinds[i % 3].format(i // 3 + 1) for i in range(count)]
    scratch = max(1, count // 20)
    return paths[: count - scratch] + [f"scratch/tmp_{i:04d}.dat" for i in range(scratch)]


def write_files(demo: DemoSite, files_per_experiment: int, rng: random.Random) -> None:
    """Real bytes on disk at each file's layout path, plus the DM listing of them."""
    listings = demo.root / "listings"
    listings.mkdir()
    for exp in demo.experiments:
        lines = []
        for path in file_paths(files_per_experiment):
            data = rng.randbytes(rng.randint(512, 16384))
            target = (
                demo.root / "storage" / exp.home / default_layout_path(exp.station, exp.name, path)
            )
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            demo.files_written += 1
            demo.bytes_written += len(data)
            md5 = hashlib.md5(data).hexdigest()
            lines.append(f"experimentFilePath={path} fileSize={len(data)} md5Sum={md5}")
        (listings / f"{exp.name}.txt").write_text("\n".join(lines) + "\n")


def build(demo: DemoSite, experiments: int, files_per_experiment: int) -> None:
    rng = random.Random(2018)
    demo.config_path.write_text(CONFIG)
    (demo.root / "rules").mkdir()
    (demo.root / "rules" / "demo.policy").write_text(RULES)
    for sub in ("workflows", "stations", "storage/daq", "storage/disk", "storage/tape"):
        (demo.root / sub).mkdir(parents=True, exist_ok=True)
    for station in STATIONS:
        (demo.root / "stations" / f"{station.lower()}.yaml").write_text(
            f"name: {station}\ndescription: Demo beamline {station}\ncontacts: [ops]\n"
        )
    demo.experiments = plan_experiments(experiments, rng)
    (demo.root / "experiments.jsonl").write_bytes(
        b"".join(orjson.dumps(e.record()) + b"\n" for e in demo.experiments)
    )
    write_files(demo, files_per_experiment, rng)


def import_site(demo: DemoSite) -> None:
    """Experiments from jsonl, daq and disk files from their DM listings, tape by a scan."""
    site = demo.site = open_site(demo.config_path, from_env=False)
    now = time.time()
    common = {"tz": site.tz, "locations": site.location_names, "now": now}
    demo.reports.append(
        import_records(site.engine, "jsonl", str(demo.root / "experiments.jsonl"), **common)
    )
    for exp in demo.experiments:
        if exp.home == "tape":
            continue
        listing = demo.root / "listings" / f"{exp.name}.txt"
        demo.reports.append(
            import_records(
                site.engine,
                "dm-listing",
                str(listing),
                experiment=exp.name,
                location=exp.home,
                **common,
            )
        )
    tape = site.config.locations["tape"]
    demo.reports.append(scan_location(site.engine, "tape", tape.url, now=now))


def check(demo: DemoSite, out: Console) -> None:
    """The same check a config repo runs in its CI; the demo's rules must pass it."""
    from policyd.rules.check import check_site, render_check

    result = check_site([demo.root])
    out.print(f"policyd check: {render_check(result)}", highlight=False, markup=False)
    if not result.ok:
        raise RuntimeError("the demo's own rules do not pass policyd check")


def show(demo: DemoSite, out: Console) -> None:
    assert demo.site is not None
    table = Table(title="Experiments")
    for column in ("name", "station", "start", "end", "files lie on"):
        table.add_column(column)
    for exp in demo.experiments:
        table.add_row(
            exp.name,
            exp.station,
            exp.start.date().isoformat(),
            exp.end.date().isoformat() if exp.end else "running",
            exp.home,
        )
    out.print(table)
    for report in demo.reports:
        if isinstance(report, ImportReport):
            c = report.counts
            out.print(
                f"  imported {Path(report.source).name}: {c['experiments']} experiments, "
                f"{c['files']} files, {c['replicas']} replicas",
                highlight=False,
            )
        else:
            c = report.counts
            out.print(
                f"  scanned {report.location}: {c['seen']} files, {c['new_files']} new files, "
                f"{c['new_replicas']} replicas recorded",
                highlight=False,
            )
    stats = collection_stats(demo.site.engine)
    out.print(
        f"Catalog: nFiles={stats['nFiles']} collectionSize={stats['collectionSize']} "
        f"({format_size(stats['collectionSize'])}), averageFileSize={stats['averageFileSize']:.1f}",
        highlight=False,
    )


#: The demo plans as of this time, so two demos show the same plan.
PLAN_AT = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


def plan(demo: DemoSite, out: Console) -> None:
    """What the rules want done, as `policyd plan` shows it; the plan file is kept."""
    from policyd.planner.engine import PlanOptions
    from policyd.planner.render import render_text
    from policyd.planner.run import plan_site

    assert demo.site is not None
    result = plan_site(demo.site, PlanOptions(PLAN_AT.timestamp()))
    with (demo.root / "plan.json").open("wb") as handle:
        result.write_json(handle)
    out.print(render_text(result, per_rule=4), highlight=False, markup=False)


def apply(demo: DemoSite, out: Console) -> None:
    """Carry the plan out, then show that a second plan is empty and the ledger holds."""
    from policyd.actions.apply import apply_plan, load_plan
    from policyd.actions.context import ApplyOptions
    from policyd.audit.ledger import verify
    from policyd.planner.engine import PlanOptions
    from policyd.planner.run import plan_site, site_rules

    assert demo.site is not None
    config, engine = demo.site.config, demo.site.engine
    loaded = load_plan((demo.root / "plan.json").read_bytes(), "plan.json", config)
    report = apply_plan(
        config,
        engine,
        site_rules(config),
        loaded,
        ApplyOptions(parallel=4),
        clock=PLAN_AT.timestamp,
    )
    counts = report.counts
    out.print(
        f"apply: {counts['done']} actions done, {counts['suspended']} suspended, "
        f"{counts['refused']} refused; copied {format_size(report.bytes_copied)}, "
        f"freed {format_size(report.bytes_freed)}",
        highlight=False,
    )
    again = plan_site(demo.site, PlanOptions(PLAN_AT.timestamp()))
    out.print(f"a second plan: {len(again.actions)} actions", highlight=False)
    ledger = verify(engine)
    out.print(
        f"ledger verify: {'ok' if ledger.ok else 'BROKEN'}, {ledger.events} events", highlight=False
    )


Step = Callable[[DemoSite, Console], None]


def policyd_command() -> str:
    """`policyd` if the shell finds it, else the path of the one running (`make demo`
    runs it from .venv/bin, which is not on the PATH)."""
    if shutil.which("policyd"):
        return "policyd"
    beside = Path(sys.executable).parent / "policyd"
    return str(beside) if beside.exists() else f"{sys.executable} -m policyd"


def run_demo(
    directory: Path | None,
    experiments: int,
    files_per_experiment: int,
    out: Console,
    err: Console,
) -> DemoSite:
    root = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="policyd-demo-"))
    if not root.exists():
        root.mkdir(parents=True)
    if not root.is_dir() or any(root.iterdir()):
        raise FileExistsError(f"{root} is not an empty folder: give --dir a new or empty one")
    demo = DemoSite(root.resolve())
    steps: list[tuple[str, Step]] = [
        ("build the site", lambda d, _o: build(d, experiments, files_per_experiment)),
        ("check the rules", check),
        ("import the catalog", lambda d, _o: import_site(d)),
        ("show what is there", show),
        ("plan what the rules want", plan),
        ("apply the plan", apply),
    ]
    for title, step in steps:
        err.print(f"[bold]policyd demo:[/] {title}", highlight=False)
        step(demo, out)
    out.print(
        f"\nDemo site in [bold]{demo.root}[/]: {demo.files_written} files "
        f"({format_size(demo.bytes_written)}) on 3 locations (daq, disk, tape), "
        f"{len(demo.experiments)} experiments, catalog {demo.root / 'catalog.db'}.",
        highlight=False,
    )
    command = policyd_command()
    first = demo.experiments[0].name
    out.print(f"Plan file: {demo.root / 'plan.json'}", highlight=False)
    out.print(f"Try: {command} catalog stats -c {demo.config_path}", highlight=False)
    out.print(
        f"     {command} plan -c {demo.config_path} --at {PLAN_AT:%Y-%m-%dT%H:%M:%SZ}",
        highlight=False,
    )
    out.print(f"     {command} explain -c {demo.config_path} {first}:PATH", highlight=False)
    out.print(f"     {command} ledger verify -c {demo.config_path}", highlight=False)
    return demo
