"""One entry point for `policyd catalog import KIND SOURCE`: which options each kind
takes, and the call into the importer for that kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from sqlalchemy import Engine, text

from policyd.catalog.importers import ImportReport, ImportUsageError, import_records
from policyd.catalog.scan import ScanReport, scan_location
from policyd.catalog.sums import fold_catalog
from policyd.diagnostics import Diagnostic

# Which options make sense for which kind; anything else is refused, not ignored.
OPTIONS = {
    "jsonl": {"location", "path_prefix"},
    "csv": {"location", "path_prefix"},
    "dm-listing": {"experiment", "location", "path_prefix"},
    "mongo": {"experiment", "location", "path_prefix", "database"},
    "scan": {"experiment", "path_prefix", "under", "allow_empty"},
}
FLAGS = {
    "experiment": "--experiment",
    "location": "--location",
    "path_prefix": "--path-prefix",
    "under": "--under",
    "database": "--database",
    "allow_empty": "--allow-empty",
}


@dataclass(frozen=True)
class ImportOptions:
    experiment: tuple[str, ...] = ()
    location: str | None = None
    path_prefix: str | None = None
    under: str | None = None
    database: str | None = None
    allow_empty: bool = False

    def given(self) -> set[str]:
        return {name for name in FLAGS if getattr(self, name) not in (None, (), False)}

    def check(self, kind: str) -> None:
        extra = self.given() - OPTIONS[kind]
        if extra:
            flags = ", ".join(FLAGS[name] for name in sorted(extra))
            raise ImportUsageError(f"{kind} does not take {flags}")
        if len(self.experiment) > 1 and kind != "mongo":
            raise ImportUsageError("--experiment is given more than once; only mongo takes several")
        if self.path_prefix is not None and self.location is None and kind != "scan":
            raise ImportUsageError("--path-prefix says where on --location: give --location too")
        if kind == "scan" and self.path_prefix is not None and not self.experiment:
            raise ImportUsageError("scan: --path-prefix needs --experiment (whose files lie there)")


def run_import(
    engine: Engine,
    kind: str,
    source: str,
    options: ImportOptions,
    *,
    tz: tzinfo,
    locations: dict[str, str],
    now: float,
    on_problem: Callable[[Diagnostic], None] | None = None,
    no_config: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[ImportReport | ScanReport]:
    """`locations` maps each location of the site config to its URL; `progress` is
    told how many bytes of a file source have been read."""
    reports = _run_import(
        engine,
        kind,
        source,
        options,
        tz=tz,
        locations=locations,
        now=now,
        on_problem=on_problem,
        no_config=no_config,
        progress=progress,
    )
    fold_catalog(engine)
    refresh_statistics(engine)
    return reports


def refresh_statistics(engine: Engine) -> None:
    """ANALYZE the tables an import fills: a PostgreSQL server without autovacuum would
    otherwise plan the planner's queries on empty statistics (and take hours over what
    takes seconds). SQLite's planner does without."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        conn.execute(text("ANALYZE experiments, files, replicas"))


def _run_import(
    engine: Engine,
    kind: str,
    source: str,
    options: ImportOptions,
    *,
    tz: tzinfo,
    locations: dict[str, str],
    now: float,
    on_problem: Callable[[Diagnostic], None] | None,
    no_config: bool,
    progress: Callable[[int], None] | None,
) -> list[ImportReport | ScanReport]:
    options.check(kind)
    if options.location is not None and options.location not in locations:
        raise ImportUsageError(
            "--location " + unknown_location(options.location, locations, no_config)
        )
    known = frozenset(locations)
    experiment = options.experiment[0] if options.experiment else None
    if kind == "scan":
        if source not in locations:
            raise ImportUsageError("scan: " + unknown_location(source, locations, no_config))
        return [
            scan_location(
                engine,
                source,
                locations[source],
                now=now,
                under=options.under or "",
                experiment=experiment,
                path_prefix=options.path_prefix,
                on_problem=on_problem,
                allow_empty=options.allow_empty,
            )
        ]
    common: dict[str, Any] = {
        "tz": tz,
        "locations": known,
        "now": now,
        "location": options.location,
        "path_prefix": options.path_prefix,
        "on_problem": on_problem,
    }
    if kind == "mongo":
        from policyd.catalog.mongo import import_mongo

        return list(
            import_mongo(
                engine,
                source,
                database=options.database,
                experiments=list(options.experiment) or None,
                **common,
            )
        )
    return [
        import_records(engine, kind, source, experiment=experiment, progress=progress, **common)
    ]


def unknown_location(name: str, locations: dict[str, str], no_config: bool) -> str:
    if no_config:
        return (
            f"{name!r}: no site config is loaded, so no location is known "
            "(pass -c PATH or set POLICYD_CONFIG)"
        )
    return (
        f"{name!r} is not a location of the site config "
        f"(known: {', '.join(sorted(locations)) or 'none'})"
    )
