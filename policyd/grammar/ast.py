"""The syntax tree of a rule file, as both front ends (DSL and YAML) produce it.

Nodes are frozen so that later passes (name resolution, type checking, the three
compilers) can share them without copying, and every node carries the Span it came
from so that any of those passes can report a mistake at its line and column. The
tree records what was written, not what it means: it knows no locations, channels or
attributes; the rules package decides whether `voyagr` or `file.szie` exist.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal as TypingLiteral

from policyd.diagnostics import Span

LiteralKind = TypingLiteral[
    "text", "number", "size", "duration", "percent", "time", "bool", "null", "list"
]


# ---- expressions


@dataclass(frozen=True, slots=True)
class Literal:
    """A constant, already in its canonical unit.

    `value` is: text for text and time (ISO text as written, the site timezone is
    applied later); int or float for number; int bytes for size; float seconds for
    duration; a fraction for percent (`80%` is 0.8); bool; None for null; a tuple of
    expressions for list.
    """

    kind: LiteralKind
    value: object
    span: Span


@dataclass(frozen=True, slots=True)
class Attribute:
    """A dotted attribute such as `file.path`, `file.meta.sample` or `now`."""

    path: tuple[str, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Index:
    """`file.meta["beam-energy"]`: a key that is not an identifier."""

    target: Attribute
    key: str
    span: Span


@dataclass(frozen=True, slots=True)
class KeywordArgument:
    """`station = "8IDI"` in a call, or `qmap = E` in a run rule's `with` clause."""

    name: str
    value: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Call:
    name: str
    args: tuple[Expr, ...]
    kwargs: tuple[KeywordArgument, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Unary:
    """Unary minus on anything but a number literal (`-3` is folded into a Literal)."""

    op: TypingLiteral["-"]
    operand: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Binary:
    op: TypingLiteral["+", "-"]
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Compare:
    op: TypingLiteral["==", "!=", "<", "<=", ">", ">="]
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Like:
    """`E like "GLOB"`; the pattern is a literal so every backend can compile it ahead."""

    operand: Expr
    pattern: str
    span: Span


@dataclass(frozen=True, slots=True)
class Matches:
    operand: Expr
    pattern: str
    span: Span


@dataclass(frozen=True, slots=True)
class In:
    item: Expr
    container: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class IsNull:
    """`E is null`, or `E is not null` when negated (one node: both are total, never null)."""

    operand: Expr
    negated: bool
    span: Span


@dataclass(frozen=True, slots=True)
class And:
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Or:
    left: Expr
    right: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    span: Span


Expr = (
    Literal
    | Attribute
    | Index
    | Call
    | Unary
    | Binary
    | Compare
    | Like
    | Matches
    | In
    | IsNull
    | And
    | Or
    | Not
)


# ---- names, location sets, principals and clause values


@dataclass(frozen=True, slots=True)
class Name:
    """A name in a clause position (rule, location, channel, workflow, station)."""

    value: str
    quoted: bool
    span: Span


@dataclass(frozen=True, slots=True)
class LocationNames:
    """`on voyager, hpc`: the listed locations."""

    names: tuple[Name, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class LocationTier:
    """`on tier "disk"`: every location of that tier."""

    tier: Name
    span: Span


@dataclass(frozen=True, slots=True)
class LocationQuery:
    """`on locations where E`, E over `location.name`, `.tier`, `.site`."""

    where: Expr
    span: Span


LocationSet = LocationNames | LocationTier | LocationQuery


@dataclass(frozen=True, slots=True)
class Principal:
    """`experiment.users` (name None), `user "NAME"` or `group "NAME"`."""

    kind: TypingLiteral["experiment-users", "user", "group"]
    name: Name | None
    span: Span


@dataclass(frozen=True, slots=True)
class NotifyBefore:
    """`notify CH before D`: tell CH once, D ahead of the first delete."""

    channel: Name
    before: Literal
    span: Span


@dataclass(frozen=True, slots=True)
class OrderBy:
    expr: Expr
    descending: bool
    span: Span


# ---- statements (one verb each)


@dataclass(frozen=True, slots=True)
class Place:
    where: Expr
    on: Name | None
    at: Literal | None
    span: Span


@dataclass(frozen=True, slots=True)
class Replicate:
    where: Expr
    copies: Literal | None
    on: LocationSet | None
    span: Span


@dataclass(frozen=True, slots=True)
class Archive:
    where: Expr
    to: Name | None
    release_from: tuple[Name, ...]
    notify: NotifyBefore | None
    span: Span


@dataclass(frozen=True, slots=True)
class Release:
    where: Expr
    from_: tuple[Name, ...]
    when: Expr | None
    until: Literal | None
    order_by: OrderBy | None
    notify: NotifyBefore | None
    span: Span


@dataclass(frozen=True, slots=True)
class Expire:
    where: Expr
    notify: NotifyBefore | None
    span: Span


@dataclass(frozen=True, slots=True)
class Protect:
    where: Expr
    span: Span


@dataclass(frozen=True, slots=True)
class Alarm:
    when: Expr
    clear_when: Expr | None
    notify: tuple[Name, ...]
    severity: str | None
    for_: Literal | None
    span: Span


@dataclass(frozen=True, slots=True)
class Grant:
    """`on_directory` is False when the `on experiment directory` clause is missing."""

    perms: tuple[TypingLiteral["read", "write"], ...]
    principals: tuple[Principal, ...]
    on_directory: bool
    at: Name | None
    while_: Expr | None
    span: Span


@dataclass(frozen=True, slots=True)
class Run:
    workflow: Name
    where: Expr | None
    with_: tuple[KeywordArgument, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class Verify:
    where: Expr | None
    on: Name | None
    every: Literal | None
    sample: Literal | None
    span: Span


Statement = Place | Replicate | Archive | Release | Expire | Protect | Alarm | Grant | Run | Verify


# ---- rules and files


@dataclass(frozen=True, slots=True)
class Rule:
    """One rule; `statements` holds one statement, or several `alarm`s or `grant`s.

    `schedule` is a duration literal (`schedule every 1 day`) or a text literal holding
    a cron expression (`schedule "0 3 * * *"`).
    """

    name: Name
    priority: Literal | None
    statements: tuple[Statement, ...]
    schedule: Literal | None
    disabled: bool
    span: Span


@dataclass(frozen=True, slots=True)
class File:
    station: Name | None
    rules: tuple[Rule, ...]
    span: Span


def walk(expr: Expr) -> Iterator[Expr]:
    """`expr` and every expression inside it, iteratively (the parser bounds nesting,
    but checks must not depend on the recursion limit)."""
    stack: list[Expr] = [expr]
    while stack:
        node = stack.pop()
        yield node
        match node:
            case Literal(kind="list", value=tuple() as items):
                stack.extend(items)  # type: ignore[arg-type]
            case Call(args=args, kwargs=kwargs):
                stack.extend(args)
                stack.extend(k.value for k in kwargs)
            case Unary(operand=o) | Not(operand=o) | IsNull(operand=o):
                stack.append(o)
            case Like(operand=o) | Matches(operand=o):
                stack.append(o)
            case Binary(left=a, right=b) | Compare(left=a, right=b):
                stack.extend((a, b))
            case And(left=a, right=b) | Or(left=a, right=b):
                stack.extend((a, b))
            case In(item=a, container=b):
                stack.extend((a, b))
            case Index(target=t):
                stack.append(t)
