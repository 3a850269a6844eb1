"""The typed rule model: checked rules as the planner reads them.

The syntax tree keeps what was written, with spans, so that `check` can point at a
mistake; the planner needs what it means: a rule's full name and config order, its
location set resolved against the site config (`tier "disk"` is a list of locations),
quantities as numbers (copies, seconds, fractions) and defaults filled in (order by
`file.modified` ascending, alarm severity `warning`). Both front ends (DSL and YAML)
give the same tree, so they give the same model. Expressions stay syntax trees: they
are lowered to the predicate IR at plan time, when `now` and the storage state are
known.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from policyd.diagnostics import Span
from policyd.grammar import ast
from policyd.rules import ir
from policyd.rules.passes import RuleFile, full_rule_name
from policyd.rules.pyeval import compile_python
from policyd.stations.config import SiteConfig


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)


class NotifyBefore(_Model):
    channel: str
    before: float  # seconds


class Place(_Model):
    verb: Literal["place"] = "place"
    where: ast.Expr
    on: str
    at: str


class Replicate(_Model):
    verb: Literal["replicate"] = "replicate"
    where: ast.Expr
    copies: int
    on: tuple[str, ...]  # in site-config order


class Archive(_Model):
    verb: Literal["archive"] = "archive"
    where: ast.Expr
    to: str
    release_from: tuple[str, ...]
    notify: NotifyBefore | None = None


class Release(_Model):
    verb: Literal["release"] = "release"
    where: ast.Expr
    from_: tuple[str, ...]
    when: ast.Expr | None = None
    until: float | None = None  # a fraction
    order_by: ast.Expr
    descending: bool = False
    notify: NotifyBefore | None = None


class Expire(_Model):
    verb: Literal["expire"] = "expire"
    where: ast.Expr
    notify: NotifyBefore | None = None


class Protect(_Model):
    verb: Literal["protect"] = "protect"
    where: ast.Expr


class Alarm(_Model):
    verb: Literal["alarm"] = "alarm"
    when: ast.Expr
    clear_when: ast.Expr | None = None
    notify: tuple[str, ...]
    severity: Literal["info", "warning", "critical"] = "warning"
    for_: float = 0.0


class Principal(_Model):
    kind: Literal["experiment-users", "user", "group"]
    name: str | None = None


class Grant(_Model):
    verb: Literal["grant"] = "grant"
    perms: tuple[Literal["read", "write"], ...]
    principals: tuple[Principal, ...]
    at: str
    while_: ast.Expr | None = None


class Run(_Model):
    verb: Literal["run"] = "run"
    workflow: str
    where: ast.Expr
    with_: tuple[tuple[str, ast.Expr], ...] = ()


class Verify(_Model):
    verb: Literal["verify"] = "verify"
    where: ast.Expr
    on: str
    every: float  # seconds
    sample: float | None = None  # a fraction of the location's replicas


Statement = Place | Replicate | Archive | Release | Expire | Protect | Alarm | Grant | Run | Verify

FILE_VERBS = frozenset({"place", "replicate", "archive", "release", "expire", "protect", "run"})


class Rule(_Model):
    """One rule; `order` is its place in config order (file, then rule in the file)."""

    name: str
    short_name: str
    station: str | None
    order: int
    priority: int = 0
    disabled: bool = False
    statements: tuple[Statement, ...]
    file: str
    span: Span

    @property
    def verb(self) -> str:
        return self.statements[0].verb


_TRUE = ast.Literal("bool", True, Span(""))
_MODIFIED = ast.Attribute(("file", "modified"), Span(""))


def _number(literal: ast.Literal | None, default: float = 0.0) -> float:
    value = literal.value if literal is not None else default
    return float(value) if isinstance(value, int | float) else default


def _notify(node: ast.NotifyBefore | None) -> NotifyBefore | None:
    if node is None:
        return None
    return NotifyBefore(channel=node.channel.value, before=_number(node.before))


def resolve_locations(locations: ast.LocationSet, config: SiteConfig) -> tuple[str, ...]:
    """A location set as location names in site-config order."""
    match locations:
        case ast.LocationNames(names=names):
            wanted = {n.value for n in names}
            listed = [n.value for n in names]
            ordered = [name for name in config.locations if name in wanted]
            return tuple(ordered + [n for n in listed if n not in config.locations])
        case ast.LocationTier(tier=tier):
            return tuple(n for n, loc in config.locations.items() if loc.tier == tier.value)
        case ast.LocationQuery(where=where):
            test = compile_python(ir.lower(where, ir.Bindings(0.0, config.tzinfo)))
            return tuple(
                name
                for name, loc in config.locations.items()
                if test(
                    {"location.name": name, "location.tier": loc.tier, "location.site": loc.site}
                )
            )
    return ()


def _statement(node: ast.Statement, config: SiteConfig) -> Statement:
    match node:
        case ast.Place(where=where, on=on, at=at):
            return Place(where=where, on=on.value if on else "", at=str(at.value) if at else "")
        case ast.Replicate(where=where, copies=copies, on=on):
            names = resolve_locations(on, config) if on is not None else ()
            return Replicate(where=where, copies=int(_number(copies, 1)), on=names)
        case ast.Archive(where=where, to=to, release_from=release_from, notify=notify):
            return Archive(
                where=where,
                to=to.value if to else "",
                release_from=tuple(n.value for n in release_from),
                notify=_notify(notify),
            )
        case ast.Release(where=where, from_=from_, when=when, until=until, order_by=order):
            return Release(
                where=where,
                from_=tuple(n.value for n in from_),
                when=when,
                until=_number(until) if until is not None else None,
                order_by=order.expr if order is not None else _MODIFIED,
                descending=order.descending if order is not None else False,
                notify=_notify(node.notify),
            )
        case ast.Expire(where=where, notify=notify):
            return Expire(where=where, notify=_notify(notify))
        case ast.Protect(where=where):
            return Protect(where=where)
        case ast.Alarm(when=when, clear_when=clear_when, notify=notify, severity=severity):
            return Alarm(
                when=when,
                clear_when=clear_when,
                notify=tuple(n.value for n in notify),
                severity=severity or "warning",  # type: ignore[arg-type]
                for_=_number(node.for_),
            )
        case ast.Grant(perms=perms, principals=principals, at=at, while_=while_):
            return Grant(
                perms=perms,
                principals=tuple(
                    Principal(kind=p.kind, name=p.name.value if p.name else None)
                    for p in principals
                ),
                at=at.value if at else "",
                while_=while_,
            )
        case ast.Run(workflow=workflow, where=where, with_=with_):
            return Run(
                workflow=workflow.value,
                where=where or _TRUE,
                with_=tuple((k.name, k.value) for k in with_),
            )
        case ast.Verify(where=where, on=on, every=every, sample=sample):
            return Verify(
                where=where or _TRUE,
                on=on.value if on else "",
                every=_number(every),
                sample=_number(sample) if sample is not None else None,
            )
    raise TypeError(f"not a statement: {node!r}")


def build_rules(files: Sequence[RuleFile], config: SiteConfig) -> list[Rule]:
    """The rules of checked rule files, in config order."""
    rules: list[Rule] = []
    for rule_file in files:
        tree = rule_file.tree
        for node in tree.rules:
            rules.append(
                Rule(
                    name=full_rule_name(tree, node),
                    short_name=node.name.value,
                    station=tree.station.value if tree.station else None,
                    order=len(rules),
                    priority=int(_number(node.priority)),
                    disabled=node.disabled,
                    statements=tuple(_statement(s, config) for s in node.statements),
                    file=rule_file.path,
                    span=node.span,
                )
            )
    return rules
