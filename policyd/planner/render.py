"""The human view of a plan: grouped by rule, a symbol per action, counts and bytes.

At most `per_rule` lines per rule are listed (a plan may hold a million actions); the
counts and bytes always cover all of them, and `--format json` has every action.
"""

from __future__ import annotations

from collections import Counter

from policyd.planner.plan import SYMBOLS, Action, Plan, iso
from policyd.units import format_size


def _describe(action: Action) -> str:
    where = f"{action.experiment}:{action.file}" if action.file else action.experiment
    match action.kind:
        case "copy":
            return f"copy     {where}  {action.source} -> {action.target}:{action.path}"
        case "verify":
            return f"verify   {where}  on {action.target}"
        case "delete":
            return f"delete   {where}  from {action.target}"
        case "expire":
            return f"expire   {where}  everywhere"
        case "acl":
            perms = ",".join(action.perms or ())
            return f"{action.op:<8} {perms} to {action.principal} on {action.target}:{action.path}"
        case "workflow":
            return f"run      {action.workflow} for {where}"
    return f"{action.kind} {where}"


def _counts(actions: list[Action]) -> str:
    counts = Counter(a.kind for a in actions)
    parts = []
    for kind in ("copy", "verify", "delete", "expire", "acl", "workflow"):
        if counts[kind]:
            moved = sum(a.bytes or 0 for a in actions if a.kind == kind)
            size = f" ({format_size(moved)})" if kind in ("copy", "delete", "expire") else ""
            parts.append(f"{counts[kind]} {kind}{size}")
    return ", ".join(parts)


def summary_line(plan: Plan) -> str:
    s = plan.summary()
    line = (
        f"Plan: {s['copy']} to copy ({format_size(s['bytes_to_copy'])}), "
        f"{s['verify']} to verify, {s['delete']} to delete, {s['expire']} to expire "
        f"({format_size(s['bytes_to_free'])} freed), {s['acl']} ACL changes, "
        f"{s['workflow']} workflows; {s['alarms']} alarms, {s['notices']} notices, "
        f"{s['blocked']} blocked, {s['errors']} errors."
    )
    if s["over_max_delete"]:
        limit = format_size(plan.max_delete_per_run or 0)
        line += (
            f" Deletes exceed safety.max_delete_per_run ({limit}): apply needs --allow-bulk-delete."
        )
    return line


def render_text(plan: Plan, per_rule: int = 20) -> str:
    lines = [f"policyd plan for site {plan.site} at {iso(plan.now)}", ""]
    for rule, actions in plan.by_rule():
        lines.append(f"{rule}: {_counts(actions)}")
        for action in actions[:per_rule]:
            lines.append(f"  {SYMBOLS[action.kind]} {_describe(action)}")
        if len(actions) > per_rule:
            lines.append(f"  ... and {len(actions) - per_rule} more")
        lines.append("")
    for alarm in plan.alarms:
        lines.append(
            f"! {alarm.state} alarm {alarm.rule} [{alarm.severity}] -> "
            f"{', '.join(alarm.notify)}: {alarm.message}"
        )
    for notice in plan.notices:
        lines.append(
            f"@ notice to {notice.channel} for {notice.experiment} ({notice.rule}): "
            f"{notice.files} files, {format_size(notice.bytes)} to go after {notice.delete_after}"
        )
    if plan.blocked:
        lines.append(f"blocked ({len(plan.blocked)}):")
        for item in plan.blocked[:per_rule]:
            lines.append(
                f"  x {item.rule} {item.experiment}:{item.file} on {item.target}: {item.reason}"
            )
        if len(plan.blocked) > per_rule:
            lines.append(f"  ... and {len(plan.blocked) - per_rule} more")
    if plan.errors:
        lines.append(f"errors ({len(plan.errors)}):")
        for error in plan.errors[:per_rule]:
            where = f"{error.experiment}:{error.file}" if error.file else error.experiment or ""
            lines.append(f"  error {error.rule} {where}: {error.message}")
        if len(plan.errors) > per_rule:
            lines.append(f"  ... and {len(plan.errors) - per_rule} more")
    if plan.suspended:
        lines.append(f"suspended by earlier applies ({len(plan.suspended)}):")
        for item in plan.suspended[:per_rule]:
            where = f"{item.experiment}:{item.file}" if item.file else item.experiment or ""
            lines.append(
                f"  ? {item.kind} {where} on {item.target} ({item.rule}, {item.attempts} "
                f"attempts, {item.plan_id}): {item.error}"
            )
        if len(plan.suspended) > per_rule:
            lines.append(f"  ... and {len(plan.suspended) - per_rule} more")
    if plan.alarms or plan.notices or plan.blocked or plan.errors or plan.suspended:
        lines.append("")
    lines.append(
        summary_line(plan) if plan.has_changes or plan.blocked or plan.errors else "No changes."
    )
    return "\n".join(lines)
