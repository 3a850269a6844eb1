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
from rich.table import Table
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from policyd import __version__
from policyd.catalog.importers import KINDS, ImportReport, ImportUsageError, import_records
from policyd.catalog.pipeline import StoreFailed
from policyd.catalog.stats import UnknownExperiment, collection_stats
from policyd.diagnostics import Diagnostic, DiagnosticError, render_all
from policyd.site import open_site

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("policyd")

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, hint: str | None = None) -> click.exceptions.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    if hint:
        err.print(f"  hint: {hint}", highlight=False)
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
        except ImportUsageError as exc:
            raise fail(str(exc)) from None
        except StoreFailed as exc:
            raise fail(
                f"the catalog writer failed: {exc}",
                "what was written before it is kept; fix the cause and import again "
                "(an import is an upsert, so records are not doubled)",
            ) from None
        except OperationalError as exc:
            raise fail(
                f"cannot use the catalog database: {exc.orig}",
                "check the catalog URL (POLICYD_CATALOG or `catalog:` in policyd.yaml)",
            ) from None
        except SQLAlchemyError as exc:
            raise fail(f"catalog database error: {exc}") from None

    return wrapper  # type: ignore[return-value]


config_option = click.option(
    "-c",
    "--config",
    "config",
    type=click.Path(path_type=Path),
    help="Site config (default: $POLICYD_CONFIG, else ./policyd.yaml).",
)


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


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "--version", prog_name="policyd")
@click.option("-v", "--verbose", count=True, help="More log detail on stderr (-vv for debug).")
def main(verbose: int) -> None:
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


@main.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option("--force", is_flag=True, help="Overwrite files that already exist.")
@friendly_errors
def init(directory: Path, force: bool) -> None:
    """Write a starter config repo and an empty SQLite catalog in DIRECTORY.

    \b
    Example:
      policyd init /etc/policyd/8idi
    """
    from policyd.starter import StarterExists, write_starter

    try:
        written = write_starter(directory, force=force)
    except StarterExists as exc:
        raise fail(str(exc)) from None
    for path in written:
        err.print(f"wrote {path}", highlight=False)
    out.print(f"Starter config repo in [bold]{directory}[/]; next: edit policyd.yaml, then")
    out.print(f"  policyd catalog stats -c {directory / 'policyd.yaml'}", highlight=False)


@main.command(context_settings=CONTEXT)
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path),
    help="Where to build the site (default: a new temporary folder).",
)
@click.option("--experiments", default=4, show_default=True, help="How many experiments.")
@click.option(
    "--files", "files_per_experiment", default=600, show_default=True, help="Files per experiment."
)
@friendly_errors
def demo(directory: Path | None, experiments: int, files_per_experiment: int) -> None:
    """Build a throw-away beamline site with real files and run policyd on it.

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
    help="Whose files these are (dm-listing; scan; mongo: which collections).",
    multiple=True,
)
@click.option("--location", help="Where the listed files lie (dm-listing, csv, mongo).")
@click.option(
    "--path-prefix",
    help="Files lie at PREFIX/experimentFilePath on --location instead of the layout path.",
)
@click.option("--under", default="", help="scan: walk only this folder of the location.")
@click.option("--database", help="mongo: the database (default: the URL's, else 'dm').")
@format_option("text", "json")
@friendly_errors
def catalog_import(
    kind: str,
    source: str,
    config: Path | None,
    experiment: tuple[str, ...],
    location: str | None,
    path_prefix: str | None,
    under: str,
    database: str | None,
    fmt: str,
) -> None:
    """Import catalog records: KIND is one of jsonl, csv, dm-listing, mongo, scan.

    SOURCE is a file (or - for stdin); for mongo a MongoDB URL; for scan a location name.
    A bad line is reported with its number and skipped; the rest is imported and the
    command exits 1.

    \b
    Examples:
      policyd catalog import jsonl catalog.jsonl
      dm-list-experiment-files --experiment=Smith-Mar18 \\
          --display-keys=experimentFilePath,fileSize,md5Sum \\
        | policyd catalog import dm-listing - --experiment Smith-Mar18 --location daq-8idi
      policyd catalog import mongo mongodb://dmstation:27017/dm --location voyager
      policyd catalog import scan voyager
    """
    site = open_site(config)
    now = time.time()
    problems = 0

    def on_problem(diag: Diagnostic) -> None:
        nonlocal problems
        problems += 1
        if problems <= 200:
            err.print(diag.render(), highlight=False, markup=False)
        elif problems == 201:
            err.print("... further problems are counted, not shown", highlight=False)

    if len(experiment) > 1 and kind != "mongo":
        raise fail("--experiment is given more than once; only mongo takes several")
    one_experiment = experiment[0] if experiment else None
    reports: list[Any]
    if kind == "scan":
        from policyd.catalog.scan import scan_location

        loc = site.config.locations.get(source)
        if loc is None:
            raise fail(
                f"scan: {source!r} is not a location of the site config",
                f"known locations: {', '.join(sorted(site.config.locations)) or 'none'}",
            )
        reports = [
            scan_location(
                site.engine,
                source,
                loc.url,
                now=now,
                under=under.strip("/"),
                experiment=one_experiment,
                path_prefix=path_prefix,
                on_problem=on_problem,
            )
        ]
    elif kind == "mongo":
        from policyd.catalog.mongo import import_mongo

        reports = import_mongo(
            site.engine,
            source,
            tz=site.tz,
            locations=site.location_names,
            now=now,
            database=database,
            experiments=list(experiment) or None,
            location=location,
            path_prefix=path_prefix,
            on_problem=on_problem,
        )
    else:
        reports = [
            import_records(
                site.engine,
                kind,
                source,
                tz=site.tz,
                locations=site.location_names,
                now=now,
                experiment=one_experiment,
                location=location,
                path_prefix=path_prefix,
                on_problem=on_problem,
            )
        ]
    if fmt == "json":
        emit_json([r.to_dict() for r in reports])
    else:
        for report in reports:
            out.print(describe_report(report), highlight=False)
    if not all(r.ok for r in reports):
        raise click.exceptions.Exit(1)


def describe_report(report: Any) -> str:
    if isinstance(report, ImportReport):
        c = report.counts
        text = (
            f"{report.source}: {c.get('experiments', 0)} experiments, {c.get('files', 0)} files, "
            f"{c.get('replicas', 0)} replicas imported"
        )
        if report.bad_lines:
            text += f"; {report.bad_lines} bad lines skipped"
        return text
    c = report.counts
    return (
        f"scan {report.location}: {c['seen']} files seen, {c['refreshed']} replicas refreshed, "
        f"{c['new_replicas']} new replicas ({c['new_files']} new files), "
        f"{c['missing']} marked missing, {c['unmatched']} not matched to an experiment"
        + (f", {c['symlinks_skipped']} symlinks skipped" if c["symlinks_skipped"] else "")
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
    site = open_site(config)
    try:
        stats = collection_stats(site.engine, experiment)
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


def format_stat(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.12g}"
    return str(value)


def run() -> None:
    """Console entry point; a last guard so an unforeseen error is a message, not a trace."""
    try:
        main(prog_name="policyd")
    except Exception as exc:
        if os.environ.get("POLICYD_DEBUG"):
            raise
        err.print(f"[bold red]internal error:[/] {type(exc).__name__}: {exc}", highlight=False)
        err.print(
            "  hint: rerun with POLICYD_DEBUG=1 for a traceback and report it", highlight=False
        )
        sys.exit(1)
