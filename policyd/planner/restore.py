"""`policyd restore EXPERIMENT [--to LOC]`: plan copies back from the archive to disk.

A restore is a plan like any other (copy then verify per file, with the catalog
fingerprint), so `apply` carries it out with the same ledger, resume and checks. The
target defaults to the location the file's winning `place` rule names, else the first
location of tier `disk` in the site config. Each file keeps its layout path there (or
the path of a replica it already has). Rules may release the copies again on a later
plan; `policyd pin EXPERIMENT --days N` holds them.
"""

from __future__ import annotations

from sqlalchemy import Engine

from policyd.catalog.schema import experiments
from policyd.planner.engine import Planner, PlanOptions
from policyd.planner.fingerprint import catalog_fingerprint
from policyd.planner.layout import TemplateError
from policyd.planner.plan import Plan, PlanError
from policyd.rules.model import Rule
from policyd.stations.config import SiteConfig


class RestoreError(ValueError):
    """Nothing can be restored as asked; the message says why."""


def default_target(config: SiteConfig) -> str | None:
    return next((name for name, loc in config.locations.items() if loc.tier == "disk"), None)


def plan_restore(
    config: SiteConfig,
    engine: Engine,
    rules: list[Rule],
    experiment: str,
    to: str | None,
    now: float,
) -> Plan:
    if to is not None and to not in config.locations:
        raise RestoreError(
            f"--to {to}: no such location (locations: {', '.join(config.locations)})"
        )
    planner = Planner(config, engine, rules, PlanOptions(now))
    planner.plan.catalog_fingerprint = catalog_fingerprint(engine)
    planner.prepare()
    query = planner.file_query(experiments.c.name == experiment)
    found = 0
    with engine.connect() as conn:
        for row, flags in planner.rows(conn, query):
            found += 1
            reps = {r.location: r for r in row["replicas"]}
            matched = planner.matching(row, flags)
            winner, layout = planner.layout(row, matched)
            target = to or (winner.statement.on if winner else default_target(config))  # type: ignore[union-attr]
            if target is None:
                raise RestoreError("the site has no location of tier disk: give --to LOC")
            existing = reps.get(target)
            if existing is not None and existing.state == "verified":
                continue
            source = planner.source(reps, target)
            if source is None:
                planner.plan.errors.append(
                    PlanError("restore", experiment, row["file.path"], "no replica to restore from")
                )
                continue
            try:
                path = existing.path if existing else planner.template(layout).render(row)
            except TemplateError as exc:
                planner.plan.errors.append(
                    PlanError("restore", experiment, row["file.path"], str(exc))
                )
                continue
            size = int(row.get("file.size") or 0)
            copy = planner.plan.new_action(
                "copy",
                "restore",
                "restore",
                experiment,
                file=row["file.path"],
                source=source,
                target=target,
                path=path,
                bytes=size,
            )
            planner.plan.new_action(
                "verify",
                "restore",
                "restore",
                experiment,
                file=row["file.path"],
                target=target,
                after=(copy.id,),
            )
    if not found:
        raise RestoreError(f"experiment {experiment!r} has no files in the catalog")
    return planner.plan
