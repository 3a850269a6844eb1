"""`policyd explain EXPERIMENT:PATH`: why one file gets (or does not get) its actions.

As OPA's `--explain`, it shows every rule, matched or not, with the value of each
sub-expression of its condition on this file, so a manager can see which clause
failed; then which rule locks which replica, and the actions the planner gives the
file. It uses the planner's own compiled rules and the same per-file decision, so
what it says is what `plan` does, and it changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_

from policyd.catalog.schema import experiments, files
from policyd.grammar import ast
from policyd.planner.engine import FileRule, Planner, PlanOptions, Replica
from policyd.planner.plan import Action, Blocked, Plan, PlanError, iso
from policyd.rules import ir, model
from policyd.rules.pyeval import Row, compile_python
from policyd.rules.typecheck import FILE_VALUE, check_expression, expression_text
from policyd.rules.types import Type
from policyd.units import format_duration, format_size


class UnknownFile(LookupError):
    """No such EXPERIMENT:PATH in the catalog."""


@dataclass
class Step:
    """One sub-expression and its value on the file, `depth` for indentation."""

    depth: int
    text: str
    value: str


@dataclass
class RuleExplanation:
    rule: str
    verb: str
    matched: bool
    selected: bool
    steps: list[Step]
    evaluated_in: str  # "database" or "Python: reasons"


@dataclass
class Explanation:
    experiment: str
    path: str
    now: float
    replicas: list[Replica]
    rules: list[RuleExplanation] = field(default_factory=list)
    locks: dict[str, str] = field(default_factory=dict)  # location -> rule
    actions: list[Action] = field(default_factory=list)
    blocked: list[Blocked] = field(default_factory=list)
    errors: list[PlanError] = field(default_factory=list)


def _shown(value: Any, kind: Type) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if kind.kind == "time" and isinstance(value, int | float):
        return iso(float(value))
    if kind.kind == "size" and isinstance(value, int | float):
        return f"{format_size(int(value))} ({int(value)} B)"
    if kind.kind == "duration" and isinstance(value, int | float):
        return format_duration(float(value))
    if kind.kind == "percent" and isinstance(value, int | float):
        return f"{value * 100:g}%"
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    return str(value)


_CONDITIONS = (ast.And, ast.Or, ast.Not, ast.Compare, ast.Like, ast.Matches, ast.In, ast.IsNull)


def _children(node: ast.Expr) -> list[ast.Expr]:
    match node:
        case ast.And(left=a, right=b) | ast.Or(left=a, right=b):
            return [a, b]
        case ast.Compare(left=a, right=b) | ast.Binary(left=a, right=b):
            return [a, b]
        case ast.In(item=a, container=b):
            return [a, b]
        case ast.Not(operand=o) | ast.Unary(operand=o) | ast.IsNull(operand=o):
            return [o]
        case ast.Like(operand=o) | ast.Matches(operand=o):
            return [o]
        case ast.Call(args=args, kwargs=kwargs):
            return [*args, *(k.value for k in kwargs)]
    return []


def trace(expr: ast.Expr, row: Row, bindings: ir.Bindings) -> list[Step]:
    """Every sub-expression of `expr` with its value on `row`, outermost first."""
    steps: list[Step] = []
    stack: list[tuple[ast.Expr, int]] = [(expr, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, ast.Literal):
            continue
        lowered = ir.lower(node, bindings) if isinstance(node, _CONDITIONS) else None
        if lowered is None:
            lowered = ir.lower_value(node, bindings)
        value = compile_python(lowered)(row)
        kind, _ = check_expression(node, FILE_VALUE)
        steps.append(Step(depth, expression_text(node), _shown(value, kind)))
        stack.extend((child, depth + 1) for child in reversed(_children(node)))
    return steps


def _where(statement: model.Statement) -> ast.Expr | None:
    return getattr(statement, "where", None)


def explain_file(planner: Planner, experiment: str, path: str) -> Explanation:
    planner.prepare()
    query = planner.file_query(
        and_(experiments.c.name == experiment, files.c.path == path), expired_too=True
    )
    with planner.engine.connect() as conn:
        found = next(iter(planner.rows(conn, query)), None)
    if found is None:
        raise UnknownFile(
            f"no file {experiment}:{path} in the catalog (check the experiment name "
            "and the path inside the experiment, as `catalog import` recorded them)"
        )
    row, flags = found
    explanation = Explanation(experiment, path, planner.now, list(row["replicas"]))
    matched: list[FileRule] = []
    for fr in planner.file_rules:
        where = _where(fr.statement)
        is_match = planner.matches(fr, row, flags)
        if is_match:
            matched.append(fr)
        steps = trace(where, row, planner.bindings) if where is not None else []
        if fr.rule.station is not None:
            station = row.get("experiment.station")
            scope = "true" if station == fr.rule.station else "false"
            steps.insert(0, Step(0, f'station == "{fr.rule.station}" (the file\'s scope)', scope))
        reasons = fr.push.reasons
        where_done = "database" if not reasons else "Python: " + "; ".join(reasons)
        explanation.rules.append(
            RuleExplanation(fr.name, fr.statement.verb, is_match, fr.selected, steps, where_done)
        )
    reps = {r.location: r for r in row["replicas"]}
    wanted = planner.desired(row, matched, reps)
    explanation.locks = {loc: ", ".join(fr.name for fr in rules) for loc, rules in wanted.items()}
    planner.plan_file(row, flags)
    plan: Plan = planner.plan
    explanation.actions = list(plan.actions)
    explanation.blocked = list(plan.blocked)
    explanation.errors = list(plan.errors)
    return explanation


def explain(
    config: Any, engine: Any, rules: list[model.Rule], target: str, now: float
) -> Explanation:
    """`target` is EXPERIMENT:PATH (the path may itself hold `:`)."""
    experiment, sep, path = target.partition(":")
    if not sep or not experiment or not path:
        raise UnknownFile(f"{target!r} is not EXPERIMENT:PATH (e.g. Smith-Mar18:pix/a.tif)")
    planner = Planner(config, engine, rules, PlanOptions(now), every_field=True)
    return explain_file(planner, experiment, path)


def render_explanation(e: Explanation) -> str:
    lines = [f"{e.experiment}:{e.path} at {iso(e.now)}", "", "replicas:"]
    for r in e.replicas:
        verified = f", verified {iso(r.verified_at)}" if r.verified_at else ""
        lines.append(f"  {r.location}: {r.state} at {r.path}{verified}")
    if not e.replicas:
        lines.append("  none")
    lines.append("")
    for rule in e.rules:
        mark = "matches" if rule.matched else "does not match"
        note = "" if rule.selected else " (disabled or not selected)"
        lines.append(f"rule {rule.rule} ({rule.verb}): {mark}{note}  [{rule.evaluated_in}]")
        for step in rule.steps:
            lines.append(f"  {'  ' * step.depth}{step.text} = {step.value}")
    lines.append("")
    lines.append("locks:")
    for location, rule in e.locks.items():
        lines.append(f"  {location}: wanted by {rule}")
    if not e.locks:
        lines.append("  none: no rule requires a replica of this file")
    lines.append("")
    lines.append("actions:")
    for action in e.actions:
        detail = f" {action.source} ->" if action.source else ""
        after = f" after {','.join(action.after)}" if action.after else ""
        lines.append(
            f"  {action.id} {action.kind} ({action.rule}){detail} {action.target or ''}{after}"
        )
    for item in e.blocked:
        lines.append(f"  blocked {item.target} ({item.rule}): {item.reason}")
    for error in e.errors:
        lines.append(f"  error ({error.rule}): {error.message}")
    if not (e.actions or e.blocked or e.errors):
        lines.append("  none")
    return "\n".join(lines)
