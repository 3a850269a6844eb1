"""The `policyd` command line: parse options, call into the packages, render results."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from policyd import __version__
from policyd.catalog.db import CatalogUnavailable
from policyd.catalog.importers import KINDS, ImportReport, ImportUsageError
from policyd.catalog.pipeline import StoreFailed
from policyd.catalog.schema import JOB_STATUSES
from policyd.catalog.stats import UnknownExperiment, collection_stats
from policyd.diagnostics import Diagnostic, DiagnosticError, render_all
from policyd.planner.reader import ReaderFailed
from policyd.site import Site, open_site
from policyd.units import format_size

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("policyd")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, hint: str | None = None) -> click.exceptions.Exit:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    if hint:
        err.print(f"  hint: {hint}", highlight=False, markup=False)
    return click.exceptions.Exit(1)


def friendly_errors(func: F) -> F:
    """Bad input ends in a message that says what to do, never in a traceback."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except DiagnosticError as exc:
            err.print(render_all(exc.diagnostics), highlight=False, markup=False)
            raise click.exceptions.Exit(1) from None
        except (ImportUsageError, CatalogUnavailable) as exc:
            raise fail(str(exc)) from None
        except StoreFailed as exc:
            raise fail(
                f"the catalog writer failed: {exc}",
                "what was written before it is kept; fix the cause and import again "
                "(an import is an upsert, so records are not doubled)",
            ) from None
        except ReaderFailed as exc:
            raise fail(str(exc), exc.hint) from None
        except OperationalError as exc:
            raise fail(
                f"cannot use the catalog database: {exc.orig}",
                "check the catalog URL (POLICYD_CATALOG or `catalog:` in policyd.yaml) "
                "and that this user may read and write it",
            ) from None
        except SQLAlchemyError as exc:
            raise fail(f"catalog database error: {exc}") from None
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise fail(f"{exc.strerror or exc}{where}") from None

    return wrapper  # type: ignore[return-value]


def config_option(func: F) -> F:
    """-c on a sub-command; `policyd -c PATH COMMAND` works as well."""
    return click.option(
        "-c",
        "--config",
        "config",
        type=click.Path(path_type=Path),
        help="Site config (default: $POLICYD_CONFIG, else ./policyd.yaml).",
    )(func)


def site_for(config: Path | None) -> Site:
    ctx = click.get_current_context()
    return open_site(config or ctx.find_root().params.get("config"))


def format_option(*choices: str) -> Callable[[F], F]:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(choices),
        default=choices[0],
        show_default=True,
        help="Output for people (table/text) or for scripts (json).",
    )


def emit_json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="policyd")
@click.option("-v", "--verbose", count=True, help="More log detail on stderr (-vv for debug).")
@config_option
def main(verbose: int, config: Path | None) -> None:
    """Declarative storage policies for facility data.

    \b
    Examples:
      policyd init mysite && cd mysite
      policyd catalog import jsonl experiments.jsonl
      policyd catalog stats --experiment Smith-Mar18
      policyd demo
    """
    level = [logging.WARNING, logging.INFO, logging.DEBUG][min(verbose, 2)]
    logging.basicConfig(
        level=level,
        format="%(message)s",
        handlers=[RichHandler(console=err, show_path=False, show_time=err.is_terminal)],
    )
    logging.getLogger("alembic").setLevel(max(level, logging.WARNING))


@main.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
@friendly_errors
def init(directory: Path, force: bool) -> None:
    """Write a starter config repo and an empty SQLite catalog in DIRECTORY.

    The catalog is the repo's own (sqlite:///catalog.db next to policyd.yaml), whatever
    POLICYD_CATALOG says.

    \b
    Example:
      policyd init /etc/policyd/8idi
    """
    from policyd.starter import StarterExists, write_starter

    if directory.exists() and not directory.is_dir():
        raise fail(f"{directory} is a file: give init a folder (new or existing)")
    try:
        written = write_starter(directory, force=force)
    except StarterExists as exc:
        raise fail(str(exc)) from None
    for path in written:
        err.print(f"wrote {path}", highlight=False)
    config = directory / "policyd.yaml"
    out.print(f"Starter config repo in [bold]{directory}[/]; next: edit policyd.yaml, then")
    out.print(f"  policyd catalog stats -c '{config}'", highlight=False, markup=False)


@main.command(context_settings=CONTEXT)
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    help="Where to build the site (default: a new temporary folder).",
)
@click.option(
    "--experiments",
    default=4,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="How many experiments.",
)
@click.option(
    "--files",
    "files_per_experiment",
    default=600,
    show_default=True,
    type=click.IntRange(1, 100_000),
    help="Files per experiment.",
)
@friendly_errors
def demo(directory: Path | None, experiments: int, files_per_experiment: int) -> None:
    """Build a throw-away beamline site with real files and run policyd on it.

    The demo keeps everything, its catalog included, in its own folder: it ignores
    POLICYD_CONFIG and POLICYD_CATALOG.

    \b
    Example:
      policyd demo --dir /tmp/policyd-demo
    """
    from policyd.demo import run_demo

    try:
        run_demo(directory, experiments, files_per_experiment, out, err)
    except FileExistsError as exc:
        raise fail(str(exc)) from None


@main.group(context_settings=CONTEXT)
def catalog() -> None:
    """Fill and inspect the file catalog.

    \b
    Examples:
      policyd catalog import jsonl catalog.jsonl
      policyd catalog stats --format key-per-line
    """


@catalog.command("import", context_settings=CONTEXT)
@click.argument("kind", type=click.Choice(KINDS))
@click.argument("source")
@config_option
@click.option(
    "--experiment",
    multiple=True,
    help="Whose files these are (dm-listing, scan); mongo: which collections (repeatable).",
)
@click.option("--location", help="Where the files lie (dm-listing, jsonl, csv, mongo).")
@click.option(
    "--path-prefix",
    help="Files lie at PREFIX/experimentFilePath on the location, not at the layout path.",
)
@click.option("--under", help="scan: walk only this folder of the location.")
@click.option("--database", help="mongo: the database (default: the URL's, else 'dm').")
@click.option(
    "--allow-empty",
    is_flag=True,
    help="scan: a location with no files is really empty (else taken for unmounted).",
)
@format_option("text", "json")
@friendly_errors
def catalog_import(
    kind: str,
    source: str,
    config: Path | None,
    experiment: tuple[str, ...],
    location: str | None,
    path_prefix: str | None,
    under: str | None,
    database: str | None,
    allow_empty: bool,
    fmt: str,
) -> None:
    """Import catalog records: KIND is one of jsonl, csv, dm-listing, mongo, scan.

    SOURCE is a file (or - for stdin); for mongo a MongoDB URL; for scan a location name.
    A bad line is reported with its number and skipped; the rest is imported and the
    command exits 1. Importing a record again updates it; keys it leaves out keep the
    values the catalog has.

    \b
    Examples:
      policyd catalog import jsonl catalog.jsonl
      dm-list-experiment-files --experiment=Smith-Mar18 \\
          --display-keys=experimentFilePath,fileSize,md5Sum \\
        | policyd catalog import dm-listing - --experiment Smith-Mar18 --location daq-8idi
      policyd catalog import mongo mongodb://dmstation:27017/dm --location voyager
      policyd catalog import scan voyager
    """
    # imported here: the scanners' pyfilesystem2 would cost every other command's
    # start-up (an apply's included) a tenth of a second
    from policyd.catalog.imports import ImportOptions, run_import

    site = site_for(config)
    problems = 0

    def on_problem(diag: Diagnostic) -> None:
        nonlocal problems
        problems += 1
        if problems <= 200:
            err.print(diag.render(), highlight=False, markup=False)
        elif problems == 201:
            err.print("... further problems are counted, not shown", highlight=False)

    options = ImportOptions(experiment, location, path_prefix, under, database, allow_empty)
    with ReadingProgress(source if kind in ("jsonl", "csv", "dm-listing") else None) as bar:
        reports = run_import(
            site.engine,
            kind,
            source,
            options,
            tz=site.tz,
            locations={name: loc.url for name, loc in site.config.locations.items()},
            now=time.time(),
            on_problem=on_problem,
            no_config=site.config.path is None,
            progress=bar.callback,
        )
    if fmt == "json":
        emit_json([r.to_dict() for r in reports])
    else:
        for report in reports:
            out.print(describe_report(report), highlight=False, markup=False)
    if not all(r.ok for r in reports):
        raise click.exceptions.Exit(1)


class ReadingProgress:
    """A progress bar on stderr while an import reads a file, on a terminal only;
    `callback` is what the importer calls with the bytes read so far (None: no bar)."""

    def __init__(self, source: str | None) -> None:
        self.size = 0
        if source and source != "-" and err.is_terminal and os.path.isfile(source):
            self.size = os.path.getsize(source)
            self.name = Path(source).name
        self.callback: Callable[[int], None] | None = None

    def __enter__(self) -> ReadingProgress:
        if self.size:
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

            self.progress = Progress(
                "{task.description}",
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            task = self.progress.add_task(f"importing {self.name}", total=self.size)
            self.progress.start()
            self.callback = lambda done: self.progress.update(task, completed=done)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.callback is not None:
            self.progress.stop()


def describe_report(report: Any) -> str:
    c = report.counts
    if isinstance(report, ImportReport):
        text = (
            f"{report.source}: {plural(c.get('experiments', 0), 'experiment')}, "
            f"{plural(c.get('files', 0), 'file')}, {plural(c.get('replicas', 0), 'replica')} "
            "imported"
        )
        if report.bad_lines:
            text += f"; {plural(report.bad_lines, 'bad line')} skipped"
        return text
    return (
        f"scan {report.location}: {c['seen']} files seen, {c['refreshed']} replicas refreshed, "
        f"{c['new_replicas']} new replicas ({c['new_files']} new files), "
        f"{c['missing']} marked missing, {c['unmatched']} not matched to an experiment"
        + (f", {c['symlinks_skipped']} symlinks skipped" if c["symlinks_skipped"] else "")
        + (f", {c['unreadable']} folders unreadable" if c["unreadable"] else "")
    )


@catalog.command("stats", context_settings=CONTEXT)
@config_option
@click.option("--experiment", help="One experiment (default: the whole catalog).")
@format_option("table", "json", "key-per-line")
@friendly_errors
def catalog_stats(config: Path | None, experiment: str | None, fmt: str) -> None:
    """File collection statistics, by the keys dm-get-file-collection-stats prints.

    \b
    Examples:
      policyd catalog stats --experiment Smith-Mar18
      policyd catalog stats --format key-per-line
    """
    site = site_for(config)
    try:
        stats = collection_stats(site.reader, experiment)
    except UnknownExperiment:
        raise fail(f"experiment {experiment!r} is not in the catalog") from None
    if fmt == "json":
        emit_json(stats)
    elif fmt == "key-per-line":
        for key, value in stats.items():
            click.echo(f"{key}={format_stat(value)}")
    else:
        table = Table(title=f"Collection of {experiment}" if experiment else "Catalog collection")
        table.add_column("key")
        table.add_column("value", justify="right")
        for key, value in stats.items():
            table.add_row(key, format_stat(value))
        out.print(table)


@main.command(context_settings=CONTEXT)
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@config_option
@format_option("text", "json")
def check(paths: tuple[Path, ...], config: Path | None, fmt: str) -> None:
    """Check the site config and every rule, workflow and station file it names.

    PATHS are config folders or files; without any, the site config found as usual
    (-c, $POLICYD_CONFIG, ./policyd.yaml). Needs neither the storage nor the catalog
    database, so a config repo can run it in its own CI. Exit 0 clean, 1 on errors.

    \b
    Examples:
      policyd check
      policyd check examples/aps --format json
    """
    from policyd.rules.check import check_command

    config = config or click.get_current_context().find_root().params.get("config")
    raise click.exceptions.Exit(check_command([*([config] if config else []), *paths], fmt))


def parse_at(value: str | None, site: Site) -> float:
    """`--at TIME` as epoch seconds (the site timezone when TIME has no offset); the
    wall clock without it. The planner itself never reads the clock."""
    if value is None:
        return time.time()
    from policyd.rules.ir import time_value

    try:
        return time_value(value, site.tz)
    except ValueError:
        raise fail(
            f"--at {value!r} is not a time", "write e.g. 2026-11-24 or 2026-11-24T08:00:00Z"
        ) from None


@main.command(context_settings=CONTEXT)
@config_option
@click.option("--at", "at", metavar="TIME", help="Plan as of TIME instead of now (ISO 8601).")
@click.option("--rule", "rules", multiple=True, metavar="NAME", help="Only this rule (repeatable).")
@click.option("--station", metavar="S", help="Only files and rules of station S.")
@click.option(
    "--out", "out_file", type=click.Path(path_type=Path), help="Write the plan file here."
)
@format_option("text", "json")
@click.option(
    "--detailed-exitcode",
    is_flag=True,
    help="Exit 0 when there is nothing to do, 2 when the plan has changes, 1 on error.",
)
@friendly_errors
def plan(
    config: Path | None,
    at: str | None,
    rules: tuple[str, ...],
    station: str | None,
    out_file: Path | None,
    fmt: str,
    detailed_exitcode: bool,
) -> None:
    """Evaluate the rules against the catalog and show what would be done; change nothing.

    \b
    Examples:
      policyd plan
      policyd plan --at 2026-11-24T08:00:00Z --out plan.json
      policyd plan --rule archive-raw --station 8IDI --format json
      policyd plan --detailed-exitcode || echo "changes pending"
    """
    from policyd.planner.engine import PlanOptions, RuleSelectionError
    from policyd.planner.render import render_text, summary_line
    from policyd.planner.run import plan_site

    site = site_for(config)
    options = PlanOptions(
        parse_at(at, site), rules, station, json=out_file is not None or fmt == "json"
    )
    with PlanningProgress() as progress:
        try:
            result = plan_site(site, options, progress.update)
        except RuleSelectionError as exc:
            raise fail(str(exc), "policyd check lists the rules with their full names") from None
    if out_file is not None:
        with out_file.open("wb") as handle:
            result.write_json(handle)
        err.print(f"plan written to {out_file}: {summary_line(result)}", highlight=False)
    if fmt == "json":
        result.write_json(sys.stdout.buffer)
        sys.stdout.flush()
    elif out_file is None or out.is_terminal:
        out.print(render_text(result), highlight=False, markup=False)
    if detailed_exitcode and result.has_changes:
        raise click.exceptions.Exit(2)


@main.command(context_settings=CONTEXT)
@click.argument("target", metavar="EXPERIMENT:PATH")
@config_option
@click.option("--at", "at", metavar="TIME", help="Explain as of TIME instead of now (ISO 8601).")
@friendly_errors
def explain(target: str, config: Path | None, at: str | None) -> None:
    """Show, for one file, each rule with the value of every sub-expression, which rule
    locks which replica, and the actions the file would get. Changes nothing.

    \b
    Examples:
      policyd explain Smith-Mar18:pix/macimg_000001.tif
      policyd explain Smith-Mar18:raw/xpcs_0001.imm --at 2026-11-24T08:00:00Z
    """
    from policyd.planner.explain import UnknownFile, render_explanation
    from policyd.planner.explain import explain as explain_target
    from policyd.planner.run import site_rules

    site = site_for(config)
    try:
        result = explain_target(
            site.config, site.engine, site_rules(site.config), target, parse_at(at, site)
        )
    except UnknownFile as exc:
        raise fail(str(exc)) from None
    out.print(render_explanation(result), highlight=False, markup=False)


@main.command(context_settings=CONTEXT)
@click.argument("plan_file", metavar="[PLAN.json]", required=False, type=click.Path(path_type=Path))
@config_option
@click.option("--yes", is_flag=True, help="Do not ask before running a plan made now.")
@click.option(
    "--parallel", default=4, show_default=True, type=click.IntRange(1, 256), help="Actions at once."
)
@click.option("--allow-expire", is_flag=True, help="Let expire actions delete every replica.")
@click.option(
    "--allow-bulk-delete", is_flag=True, help="Delete more than safety.max_delete_per_run."
)
@click.option("--paranoid", is_flag=True, help="Re-read every replica written.")
@friendly_errors
def apply(
    plan_file: Path | None,
    config: Path | None,
    yes: bool,
    parallel: int,
    allow_expire: bool,
    allow_bulk_delete: bool,
    paranoid: bool,
) -> None:
    """Carry out a saved plan, or plan now, show it, ask, and carry it out.

    A saved plan is refused when the catalog changed since it was made, other than by
    that plan's own actions; running it again after a crash resumes it. Every step is
    in the audit ledger (`policyd ledger verify`).

    \b
    Examples:
      policyd plan --out plan.json && policyd apply plan.json
      policyd apply --yes --parallel 8
      policyd apply plan.json --allow-expire
    """
    from policyd.actions.apply import ApplyRefused, apply_plan, load_plan
    from policyd.actions.context import ApplyOptions
    from policyd.planner.engine import PlanOptions
    from policyd.planner.render import render_text
    from policyd.planner.run import plan_site, site_rules

    site = site_for(config)
    options = ApplyOptions(parallel, allow_expire, allow_bulk_delete, paranoid, yes)
    if plan_file is not None:
        raw = plan_file.read_bytes()
        source = str(plan_file)
    else:
        made = plan_site(site, PlanOptions(time.time(), json=True))
        out.print(render_text(made), highlight=False, markup=False)
        if not made.has_changes:
            return
        if not yes and not click.confirm("Carry out this plan?", default=False, err=True):
            raise fail("nothing was done")
        raw = made.json_bytes()
        source = "the plan made now"
    try:
        loaded = load_plan(raw, source, site.config)
        with ApplyProgress(loaded.data) as progress:
            report = apply_plan(
                site.config, site.engine, site_rules(site.config), loaded, options, progress.update
            )
    except ApplyRefused as exc:
        raise fail(str(exc)) from None
    counts = report.counts
    resumed = f", {report.resumed} already done before" if report.resumed else ""
    out.print(
        f"apply {report.plan_id}: {counts['done']} done{resumed}, {counts['suspended']} suspended, "
        f"{counts['refused']} refused, {counts['waiting']} waiting; "
        f"copied {format_size(report.bytes_copied)}, freed {format_size(report.bytes_freed)}",
        highlight=False,
        markup=False,
    )
    for problem in report.problems:
        err.print(f"  {problem}", highlight=False, markup=False)
    if not report.ok:
        raise click.exceptions.Exit(1)


@main.command(context_settings=CONTEXT)
@click.argument("experiment")
@click.option(
    "--days", type=click.FloatRange(min=0, min_open=True), required=True, help="How long."
)
@config_option
@friendly_errors
def pin(experiment: str, days: float, config: Path | None) -> None:
    """Postpone archive releases, releases and expires of one experiment for N days.

    \b
    Example:
      policyd pin Smith-Mar18 --days 30
    """
    from policyd.actions.pins import UnknownExperiment, set_pin
    from policyd.planner.plan import iso

    site = site_for(config)
    now = time.time()
    try:
        result = set_pin(site.engine, experiment, now + days * 86400, now)
    except UnknownExperiment as exc:
        raise fail(str(exc)) from None
    out.print(
        f"{experiment} pinned until {iso(round(result.pinned_until or now))}", highlight=False
    )


@main.command(context_settings=CONTEXT)
@click.argument("experiment")
@config_option
@friendly_errors
def unpin(experiment: str, config: Path | None) -> None:
    """Lift an experiment's pin: rules may archive, release and expire its files again.

    \b
    Example:
      policyd unpin Smith-Mar18
    """
    from policyd.actions.pins import UnknownExperiment, set_pin

    site = site_for(config)
    try:
        result = set_pin(site.engine, experiment, None, time.time())
    except UnknownExperiment as exc:
        raise fail(str(exc)) from None
    note = "" if result.was is not None else " (it was not pinned)"
    out.print(f"{experiment} unpinned{note}", highlight=False)


@main.command(context_settings=CONTEXT)
@click.argument("experiment")
@click.option(
    "--to", "to", metavar="LOC", help="Where to (default: its layout location, else disk)."
)
@click.option(
    "--parallel", default=4, show_default=True, type=click.IntRange(1, 256), help="Copies at once."
)
@config_option
@friendly_errors
def restore(experiment: str, to: str | None, parallel: int, config: Path | None) -> None:
    """Bring an archived experiment back to disk: plan copies from the archive, run them.

    \b
    Examples:
      policyd restore Smith-Mar18
      policyd restore Smith-Mar18 --to voyager && policyd pin Smith-Mar18 --days 14
    """
    from policyd.actions.apply import ApplyRefused, apply_plan, load_plan
    from policyd.actions.context import ApplyOptions
    from policyd.planner.render import render_text
    from policyd.planner.restore import RestoreError, plan_restore
    from policyd.planner.run import site_rules

    site = site_for(config)
    rules = site_rules(site.config)
    try:
        made = plan_restore(site.config, site.engine, rules, experiment, to, time.time())
    except RestoreError as exc:
        raise fail(str(exc)) from None
    out.print(render_text(made), highlight=False, markup=False)
    if not made.actions:
        return
    try:
        loaded = load_plan(made.json_bytes(), "the restore plan", site.config)
        with ApplyProgress(loaded.data) as progress:
            report = apply_plan(
                site.config, site.engine, rules, loaded, ApplyOptions(parallel), progress.update
            )
    except ApplyRefused as exc:
        raise fail(str(exc)) from None
    out.print(
        f"restored {report.counts['done'] // 2} files ({format_size(report.bytes_copied)}); "
        f"{report.counts['suspended']} suspended",
        highlight=False,
    )
    for problem in report.problems:
        err.print(f"  {problem}", highlight=False, markup=False)
    if not report.ok:
        raise click.exceptions.Exit(1)


class ApplyProgress:
    """Actions and bytes done, rate and ETA on a terminal; log lines otherwise."""

    def __init__(self, plan: dict[str, Any]) -> None:
        self.total = len(plan["actions"])
        self.bytes = int(plan["summary"].get("bytes_to_copy", 0))
        self.bar: Any = None

    def __enter__(self) -> ApplyProgress:
        if err.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=err,
            )
            self.bar.__enter__()
            self.actions_task = self.bar.add_task("actions", total=self.total)
            self.bytes_task = self.bar.add_task("bytes", total=max(self.bytes, 1))
        return self

    def update(self, event: str, step: Any, result: Any) -> None:
        if self.bar is None:
            log.info(
                "%s %s %s %s:%s",
                step.id,
                step.kind,
                event,
                step.get("experiment"),
                step.get("file"),
            )
            return
        self.bar.advance(self.actions_task)
        if result is not None and step.kind == "copy":
            self.bar.advance(self.bytes_task, result.bytes)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


@main.group(context_settings=CONTEXT)
def ledger() -> None:
    """The audit ledger of every action, pin and notice.

    \b
    Example:
      policyd ledger verify
    """


@ledger.command("verify", context_settings=CONTEXT)
@config_option
@friendly_errors
def ledger_verify(config: Path | None) -> None:
    """Check the ledger's hash chain; exit 1 naming the first altered event.

    \b
    Example:
      policyd ledger verify
    """
    from policyd.audit.ledger import verify

    site = site_for(config)
    result = verify(site.reader)
    if not result.ok:
        raise fail(
            f"ledger broken at event {result.broken_seq}: {result.reason} "
            f"({result.events} events before it verify)",
            "the ledger was changed outside policyd; keep the database for investigation",
        )
    out.print(f"ledger ok: {result.events} events, last hash {result.last_hash}", highlight=False)


@main.group("jobs", context_settings=CONTEXT, invoke_without_command=True)
@config_option
@click.option("--status", type=click.Choice(JOB_STATUSES), help="Only jobs with this status.")
@click.option("--workflow", metavar="W", help="Only jobs of workflow W.")
@format_option("table", "json")
@click.pass_context
@friendly_errors
def jobs(
    ctx: click.Context, config: Path | None, status: str | None, workflow: str | None, fmt: str
) -> None:
    """Workflow jobs with their status, stage and times, oldest first.

    `policyd jobs show ID` gives one job's variables and each stage's command, exit
    status and output tails.

    \b
    Examples:
      policyd jobs
      policyd jobs --status failed --workflow xpcs-8idi
      policyd jobs show 7e01fb97
      policyd jobs --format json
    """
    if ctx.invoked_subcommand is not None:
        return
    from policyd.actions.workflow import list_jobs
    from policyd.planner.plan import iso
    from policyd.units import format_duration

    with site_for(config).reader.connect() as conn:
        views = list_jobs(conn, status=status, workflow=workflow)
    if fmt == "json":
        emit_json([v.to_json() for v in views])
        return
    if not views:
        out.print("no jobs" + (" match" if status or workflow else ""), highlight=False)
        return
    colour = {"done": "green", "failed": "red", "timeout": "red", "aborted": "magenta"}
    table = Table(title=plural(len(views), "job"))
    for name in ("job", "status", "workflow", "file", "stage", "started", "took", "tries"):
        table.add_column(name, justify="right" if name == "tries" else "left")
    for v in views:
        table.add_row(
            v.id[:8],  # `policyd jobs show` takes the start of an id
            f"[{colour.get(v.status, 'yellow')}]{v.status}[/]",
            escape(v.workflow),
            escape(f"{v.experiment}:{v.file}"),
            escape(v.stage or ""),
            iso(round(v.started_at)) if v.started_at is not None else "",
            "" if v.took is None else format_duration(v.took),
            str(v.attempts),
        )
    out.print(table)


@jobs.command("show", context_settings=CONTEXT)
@click.argument("job_id", metavar="ID")
@config_option
@format_option("text", "json")
@friendly_errors
def jobs_show(job_id: str, config: Path | None, fmt: str) -> None:
    """One job: its variables and each stage's runs.

    Each run with its command as run, exit status, times and the tails of its stdout
    and stderr. ID may be the start of a job id that no other job shares.

    \b
    Examples:
      policyd jobs show 7e01fb97-44b1-4b7f-b1ca-d08624eb8c77
      policyd jobs show 7e01fb97 --format json
    """
    from policyd.actions.workflow import job_text, list_jobs

    with site_for(config).reader.connect() as conn:
        views = list_jobs(conn, prefix=job_id)
    exact = [v for v in views if v.id == job_id]
    if len(views) > 1 and not exact:
        raise fail(f"{len(views)} jobs have ids starting with {job_id!r}; give more of it")
    if not views:
        raise fail(f"no job {job_id!r}", "`policyd jobs` lists them")
    view = (exact or views)[0]
    if fmt == "json":
        emit_json(view.to_json())
    else:
        out.print(job_text(view), highlight=False, markup=False)


class PlanningProgress:
    """Files planned so far, on stderr, for long plans on a terminal."""

    def __init__(self) -> None:
        self.status: Any = None

    def __enter__(self) -> PlanningProgress:
        if err.is_terminal:
            self.status = err.status("planning...")
            self.status.__enter__()
        return self

    def update(self, count: int) -> None:
        if self.status is not None:
            self.status.update(f"planning: {count:,} candidate files")
        else:
            log.info("planning: %s candidate files", count)

    def __exit__(self, *exc: object) -> None:
        if self.status is not None:
            self.status.__exit__(None, None, None)


@main.command(context_settings=CONTEXT)
@click.argument("file", type=click.Path(path_type=Path))
@click.option(
    "--to", "to", type=click.Choice(["yaml", "dsl"]), required=True, help="The form to write."
)
@click.option("--out", type=click.Path(path_type=Path), help="Write here instead of stdout.")
def convert(file: Path, to: str, out: Path | None) -> None:
    """Rewrite a rule file in the other form (DSL .policy <-> YAML); comments are not kept.

    \b
    Examples:
      policyd convert rules/8idi.policy --to yaml > rules/8idi.yaml
      policyd convert rules/1id.yaml --to dsl --out rules/1id.policy
    """
    from policyd.grammar.convert import convert_command

    raise click.exceptions.Exit(convert_command(file, to, out))


@main.command(context_settings=CONTEXT)
@click.argument("what", type=click.Choice(["rules", "config", "plan"]))
def schema(what: str) -> None:
    """Print the JSON Schema of YAML rule files, of policyd.yaml, or of the plan file.

    \b
    Example (VS Code with the YAML extension, in .vscode/settings.json):
      policyd schema rules > .schemas/policyd-rules.json
      "yaml.schemas": {".schemas/policyd-rules.json": "rules/*.yaml"}
    """
    if what == "rules":
        from policyd.rules.yaml_schema import rules_json_schema

        emit_json(rules_json_schema())
    elif what == "plan":
        from policyd.planner.schema import plan_json_schema

        emit_json(plan_json_schema())
    else:
        from policyd.stations.config import config_json_schema

        emit_json(config_json_schema())


def format_stat(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.12g}"
    return str(value)


def run() -> None:
    """Console entry point. Exit codes as spec/cli.md says: 0 success, 1 any error
    (a usage mistake is bad input too); an unforeseen error is a message, not a trace."""
    try:
        code = main(prog_name="policyd", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = 1
    except (click.exceptions.Abort, KeyboardInterrupt):
        err.print(
            "interrupted: what was done so far is kept; run the command again to finish "
            "(an import is an upsert, apply resumes its plan, plan and check change nothing)",
            highlight=False,
        )
        code = 130
    except Exception as exc:
        if os.environ.get("POLICYD_DEBUG"):
            raise
        err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc}", highlight=False)
        err.print(
            "  hint: rerun with POLICYD_DEBUG=1 for a traceback and report it", highlight=False
        )
        code = 1
    sys.exit(code if isinstance(code, int) else 0)
