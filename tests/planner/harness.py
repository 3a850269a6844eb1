"""Planner case tables (tests/planner/cases/*.yaml), in the style of OPA's test cases.

A case is a small catalog, rules, `at`, and the wanted plan: its actions as one line
each (`copy RULE EXP:FILE SOURCE -> TARGET:PATH`, see `action_line`), and optionally
its blocked deletes, errors, alarms and notices, or the check error codes that make
the planner refuse the rules. Every case runs on SQLite and on PostgreSQL.

Case keys: `at` (the plan's `--at`), `rules` (one rule file's text, YAML when it
starts with `version:`, else DSL; or a mapping of file names under `rules/` to their
texts, loaded in config order: `*.policy` sorted, then `*.yaml` sorted), `config`
(extra site-config text, e.g. `safety: {min_copies: 2}`), `capacity` (per location:
`daq`, `voyager`, `hpc`, `tape`), `timezone` (the site's, default UTC), `rule` and
`station` (`--rule` and `--station`), the catalog rows (`experiments`, `files` with
their `replicas`, `grants`, `jobs`, `notices`, `alarm_states`, `snapshots`), and
`want` (`actions`, `blocked`, `errors`, `alarms`, `notices`) or `want_check_errors`.

Catalog rows are written with SQLAlchemy, as the importers would leave them; times are
ISO 8601 in the case (UTC unless they say otherwise) and stored as epoch seconds.
"""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from sqlalchemy import Engine, insert, select

from policyd.catalog.schema import (
    alarm_states,
    experiments,
    files,
    grants,
    jobs,
    locations,
    notices,
    replicas,
    usage_snapshots,
)
from policyd.diagnostics import DiagnosticError
from policyd.planner.engine import PlanOptions, make_plan
from policyd.planner.plan import Action, Plan
from policyd.planner.run import site_rules
from policyd.site import open_site

CASES = Path(__file__).with_name("cases")

CONFIG = """\
site: test
timezone: {timezone}
catalog: sqlite:///catalog.db
locations:
  daq-8idi: {{url: "file:storage/daq-8idi", tier: daq, site: 8idi, capacity: {daq}}}
  voyager: {{url: "file:storage/voyager", tier: disk, site: aps, capacity: {voyager}}}
  hpc: {{url: "file:storage/hpc", tier: hpc, site: alcf, capacity: {hpc}}}
  tape: {{url: "file:storage/tape", tier: tape, site: aps, capacity: {tape}}}
notify:
  ops: {{log: true}}
  staff: {{log: true}}
workflows: ["workflows/*.yaml"]
{extra}
"""

WORKFLOW = """\
name: reduce
owner: test
stages:
  01-run:
    command: "reduce $filePath"
"""


def epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    text = str(value)
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def load_case(path: Path) -> dict[str, Any]:
    yaml = YAML(typ="safe")
    return yaml.load(path.read_text())


def build_site(case: dict[str, Any], root: Path, catalog_url: str) -> tuple[Any, Engine]:
    capacity = {"daq": "20 TB", "voyager": "1 PB", "hpc": "200 TB", "tape": "10 PB"}
    capacity |= case.get("capacity", {})
    extra = case.get("config", "")
    timezone = case.get("timezone", "UTC")
    (root / "policyd.yaml").write_text(CONFIG.format(extra=extra, timezone=timezone, **capacity))
    (root / "rules").mkdir()
    (root / "workflows").mkdir()
    (root / "workflows" / "reduce.yaml").write_text(WORKFLOW)
    for name, text in rule_files(case["rules"]).items():
        (root / "rules" / name).write_text(textwrap.dedent(text))
    for name in ("daq-8idi", "voyager", "hpc", "tape"):
        (root / "storage" / name).mkdir(parents=True)
    site = open_site(root / "policyd.yaml", from_env=False)
    site.config.catalog = catalog_url
    engine = site.engine
    fill_catalog(engine, case)
    return site, engine


def rule_files(rules: str | dict[str, str]) -> dict[str, str]:
    """File name under rules/ -> text: one text is `rules.yaml` or `rules.policy`."""
    if isinstance(rules, dict):
        return rules
    suffix = ".yaml" if rules.lstrip().startswith("version:") else ".policy"
    return {f"rules{suffix}": rules}


def fill_catalog(engine: Engine, case: dict[str, Any]) -> None:
    with engine.begin() as conn:
        location_ids = {n: i for i, n in conn.execute(select(locations.c.id, locations.c.name))}
        exp_ids: dict[str, int] = {}
        for number, e in enumerate(case.get("experiments", []), 1):
            exp_ids[e["name"]] = number
            conn.execute(
                insert(experiments).values(
                    id=number,
                    name=e["name"],
                    station=e.get("station", "8IDI"),
                    type=e.get("type"),
                    start=epoch(e.get("start", "2026-01-01")),
                    end=epoch(e.get("end")),
                    users=e.get("users", []),
                    meta=e.get("meta"),
                    pinned_until=epoch(e.get("pinned_until")),
                )
            )
        file_ids: dict[tuple[str, str], int] = {}
        for number, f in enumerate(case.get("files", []), 1):
            path = f["path"]
            name = path.rsplit("/", 1)[-1]
            file_ids[(f.get("experiment", "E1"), path)] = number
            conn.execute(
                insert(files).values(
                    id=number,
                    experiment_id=exp_ids[f.get("experiment", "E1")],
                    path=path,
                    name=name,
                    ext=name.rsplit(".", 1)[1] if "." in name else "",
                    size=f.get("size", 100),
                    md5=f.get("md5"),
                    created=epoch(f.get("created", f.get("modified", "2026-01-02"))),
                    modified=epoch(f.get("modified", "2026-01-02")),
                    meta=f.get("meta"),
                    expired_at=epoch(f.get("expired_at")),
                )
            )
            for location, spec in (f.get("replicas") or {}).items():
                spec = {"state": spec} if isinstance(spec, str) else dict(spec)
                conn.execute(
                    insert(replicas).values(
                        file_id=number,
                        location_id=location_ids[location],
                        path=spec.get("path", f"8IDI/{f.get('experiment', 'E1')}/{path}"),
                        state=spec.get("state", "verified"),
                        size=spec.get("size", f.get("size", 100)),
                        verified_at=epoch(spec.get("verified_at", "2026-01-03"))
                        if spec.get("state", "verified") == "verified"
                        else epoch(spec.get("verified_at")),
                    )
                )
        for g in case.get("grants", []):
            conn.execute(
                insert(grants).values(
                    rule=g["rule"],
                    experiment_id=exp_ids[g["experiment"]],
                    location_id=location_ids[g["location"]],
                    path=g.get("path", ""),
                    principal=g["principal"],
                    perms=g.get("perms", "read"),
                    granted_at=epoch(g.get("at", "2026-01-01")),
                )
            )
        for j in case.get("jobs", []):
            conn.execute(
                insert(jobs).values(
                    id=j["id"],
                    workflow=j["workflow"],
                    rule=j.get("rule"),
                    file_id=file_ids[(j.get("experiment", "E1"), j["file"])],
                    content=j["content"],
                    status=j.get("status", "done"),
                    submitted_at=epoch(j.get("at", "2026-01-01")),
                )
            )
        for n in case.get("notices", []):
            conn.execute(
                insert(notices).values(
                    rule=n["rule"],
                    experiment_id=exp_ids[n["experiment"]],
                    channel=n["channel"],
                    sent_at=epoch(n["sent_at"]),
                )
            )
        for a in case.get("alarm_states", []):
            conn.execute(
                insert(alarm_states).values(
                    rule=a["rule"],
                    statement=a.get("statement", 0),
                    state=a["state"],
                    since=epoch(a.get("since")),
                    condition_since=epoch(a.get("condition_since")),
                )
            )
        for s in case.get("snapshots", []):
            conn.execute(
                insert(usage_snapshots).values(
                    taken_at=epoch(s["at"]),
                    location_id=location_ids[s["location"]],
                    station=s.get("station"),
                    used_bytes=s["used"],
                    file_count=s.get("files", 0),
                )
            )


def action_line(action: Action) -> str:
    """One action as a case states it."""
    where = f"{action.experiment}:{action.file}" if action.file else action.experiment
    match action.kind:
        case "copy":
            text = f"copy {action.rule} {where} {action.source} -> {action.target}:{action.path}"
        case "verify" | "delete":
            text = f"{action.kind} {action.rule} {where} {action.target}"
        case "acl":
            perms = ",".join(action.perms or ())
            text = (
                f"acl {action.rule} {action.op} {where} {action.target}:{action.path} "
                f"{action.principal} {perms}"
            )
        case "workflow":
            args = ",".join(f"{k}={v}" for k, v in (action.args or {}).items())
            text = f"workflow {action.rule} {where} {action.workflow}" + (
                f" {args}" if args else ""
            )
        case _:
            text = f"{action.kind} {action.rule} {where}"
    if action.after:
        text += " after " + ",".join(action.after)
    return text


def plan_case(case: dict[str, Any], root: Path, catalog_url: str) -> Plan | list[str]:
    """The plan of a case, or the codes of the check errors that refuse its rules."""
    site, engine = build_site(case, root, catalog_url)
    try:
        rules = site_rules(site.config)
    except DiagnosticError as exc:
        return sorted({d.code for d in exc.diagnostics})
    options = PlanOptions(epoch(case["at"]) or 0.0, case.get("rule", ()), case.get("station"))
    try:
        return make_plan(site.config, engine, rules, options)
    finally:
        engine.dispose()


def outcome(plan: Plan) -> dict[str, list[str]]:
    return {
        "actions": [action_line(a) for a in plan.actions],
        "blocked": [
            f"{b.rule} {b.experiment}:{b.file} {b.target}: {b.reason}" for b in plan.blocked
        ],
        "errors": [f"{e.rule} {e.experiment}:{e.file}: {e.message}" for e in plan.errors],
        "alarms": [f"{a.state} {a.rule} {a.severity} {a.value}" for a in plan.alarms],
        "notices": [
            f"{n.rule} {n.experiment} {n.channel} {n.files} files {n.bytes} B" for n in plan.notices
        ],
    }


def assert_wanted(case: dict[str, Any], result: Plan | list[str]) -> None:
    """`plan_case`'s result is what the case wants: its check error codes, or its plan."""
    if "want_check_errors" in case:
        assert result == sorted(case["want_check_errors"])
        return
    assert not isinstance(result, list), f"check refused the rules: {result}"
    got = outcome(result)
    want = case["want"]
    for key in ("actions", "blocked", "errors", "alarms", "notices"):
        assert got[key] == list(want.get(key, [])), key
