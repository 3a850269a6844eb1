"""`policyd apply`: carry out a plan, once, safely, resumably.

Before anything runs: the plan file must be a valid plan of this site (its JSON
Schema, `policyd schema plan`); deletes beyond `safety.max_delete_per_run` need
`--allow-bulk-delete` and expires `--allow-expire`; one apply or daemon at a time may
act on a catalog (an advisory lock: a lock file beside a SQLite catalog, a PostgreSQL
advisory lock); and the catalog must be the one the plan was made from, other than by
this plan's own actions (see `fingerprint`). Then the runner carries the actions out;
at the end a usage snapshot per location and station is recorded (the history behind
`time_to_full`), then alarm states, notices and their notifications (`alarms`).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.engine import make_url

from policyd.actions.alarms import record_alarms_and_notices
from policyd.actions.context import ApplyOptions, ExecContext
from policyd.actions.runner import Progress, Runner, RunReport, plan_id_of
from policyd.audit import ledger
from policyd.catalog.schema import actions as actions_table
from policyd.catalog.schema import locations, usage_snapshots
from policyd.catalog.sums import fold_catalog
from policyd.planner import fingerprint
from policyd.planner.schema import PlanFile
from policyd.planner.storage import StorageState
from policyd.rules.model import Rule
from policyd.stations.config import SiteConfig
from policyd.units import format_size

_PG_APPLY_LOCK = 0x706F6C61  # "pola"


class ApplyRefused(Exception):
    """The plan is not applied, and nothing was changed; the message says why and what to do."""


@dataclass
class LoadedPlan:
    data: dict[str, Any]
    plan_id: str


def load_plan(raw: bytes, source: str, config: SiteConfig) -> LoadedPlan:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApplyRefused(f"{source}: not JSON ({exc})") from None
    try:
        PlanFile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ApplyRefused(
            f"{source}: not a policyd plan file: {where}: {first['msg']} "
            f"({exc.error_count()} problems; `policyd schema plan` gives the format)"
        ) from None
    if data["site"] != config.site:
        raise ApplyRefused(
            f"{source} is a plan of site {data['site']!r}, this config is site {config.site!r}"
        )
    return LoadedPlan(data, plan_id_of(raw))


def check_limits(plan: dict[str, Any], config: SiteConfig, options: ApplyOptions) -> None:
    summary = plan["summary"]
    if summary["expire"] and not options.allow_expire:
        raise ApplyRefused(
            f"the plan expires {summary['expire']} files (every replica deleted): "
            "rerun with --allow-expire, or plan without the expire rules (--rule)"
        )
    limit = config.safety.max_delete_per_run
    # expires delete too: the same measure as the plan's `over_max_delete`
    freed = sum(a.get("bytes") or 0 for a in plan["actions"] if a["kind"] in ("delete", "expire"))
    if limit is not None and freed > limit and not options.allow_bulk_delete:
        raise ApplyRefused(
            f"the plan deletes {format_size(freed)}, more than safety.max_delete_per_run "
            f"({format_size(limit)}): rerun with --allow-bulk-delete if that is intended"
        )


@contextmanager
def catalog_lock(engine: Engine) -> Iterator[None]:
    """One apply or daemon per catalog (spec/rules.md section 9, invariant 6)."""
    url = make_url(str(engine.url))
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(str(url.database) + ".apply-lock")
        handle = path.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ApplyRefused(
                "another policyd apply or daemon is working on this catalog; wait for it"
            ) from None
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        return
    with engine.connect() as conn:
        got = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": _PG_APPLY_LOCK}).scalar()
        conn.commit()
        if not got:
            raise ApplyRefused(
                "another policyd apply or daemon is working on this catalog; wait for it"
            )
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_APPLY_LOCK})
            conn.commit()


def check_fingerprint(engine: Engine, plan: LoadedPlan) -> None:
    """The catalog minus this plan's own changes must be the one the plan was made from."""
    with engine.connect() as conn:
        sums = fingerprint.aggregates(conn)
        deltas = [
            e.payload["delta"]
            for e in ledger.events(conn, plan_id=plan.plan_id)
            if "delta" in e.payload
        ]
    if (
        fingerprint.fingerprint_of(fingerprint.subtract(sums, deltas))
        != plan.data["catalog_fingerprint"]
    ):
        raise ApplyRefused(
            "the catalog changed since this plan was made (by an import, a scan or another "
            "apply): make a new plan (`policyd plan --out PLAN.json`) and apply that"
        )


def record_usage(engine: Engine, config: SiteConfig, at: float) -> None:
    """A usage snapshot per location and per (location, station)."""
    state = StorageState(config, engine, at)
    with engine.begin() as conn:
        ids = {n: i for i, n in conn.execute(select(locations.c.id, locations.c.name))}
        rows = []
        for name in config.locations:
            if name not in ids:
                continue
            rows.append(
                {
                    "taken_at": at,
                    "location_id": ids[name],
                    "station": None,
                    "used_bytes": state.used(name),
                    "file_count": state.file_count.get(name, 0),
                    "capacity": state.capacity.get(name),
                }
            )
            for (location, station), used in sorted(state.station_bytes.items()):
                if location == name:
                    rows.append(
                        {
                            "taken_at": at,
                            "location_id": ids[name],
                            "station": station,
                            "used_bytes": used,
                            "file_count": state.station_files.get((name, station), 0),
                            "capacity": state.limit(name, station),
                        }
                    )
        if rows:
            conn.execute(insert(usage_snapshots), rows)


def started(engine: Engine, plan_id: str) -> bool:
    with engine.connect() as conn:
        return (
            conn.execute(
                select(actions_table.c.id).where(actions_table.c.plan_id == plan_id).limit(1)
            ).first()
            is not None
        )


def apply_plan(
    config: SiteConfig,
    engine: Engine,
    rules: list[Rule],
    plan: LoadedPlan,
    options: ApplyOptions,
    progress: Progress | None = None,
    clock: Any = None,
) -> RunReport:
    check_limits(plan.data, config, options)
    with catalog_lock(engine):
        check_fingerprint(engine, plan)
        ctx = ExecContext(config, engine, plan.plan_id, options, rules)
        if clock is not None:
            ctx.clock = clock
        ctx.started_at = ctx.now()
        try:
            report = Runner(ctx, plan.data, progress).run()
        finally:
            ctx.close()  # the connections of sftp:// locations
        fold_catalog(engine)
        record_usage(engine, config, ctx.now())
        record_alarms_and_notices(ctx, plan.data, report)
    return report
