"""The Python backend of the predicate IR: the reference the SQL and Mongo backends are
tested against, and the evaluator for what they cannot express, for `explain` and for
the planner's per-file decisions.

A row is a mapping from IR field names (`file.path`, `experiment.end`, ...) to catalog
values, with `file.meta` and `experiment.meta` holding the metadata dictionaries and
`replicas` the file's replicas. The null rules of spec/rules.md section 4 are applied
here once, in `compare` and `arithmetic`, and the other backends reproduce them.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from policyd.rules import ir

Row = Mapping[str, Any]
Evaluator = Callable[[Row], Any]


@dataclass(slots=True)
class ReplicaView:
    """What a predicate may know of a replica: `copies()` and `path_on()` read it. Not
    frozen: a frozen dataclass sets each field through object.__setattr__, and a plan
    builds one per replica of every file it reads."""

    location: str
    tier: str
    state: str
    path: str


_ORDER: Final[dict[str, Callable[[Any, Any], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def coerce(value: Any, category: ir.Category) -> Any:
    """`value` where it is of `category`, else null: an untyped value of another kind
    does not meet the comparison."""
    if value is None or category == "any":
        return value
    return value if ir.category_of(value) == category else None


def equal(a: Any, b: Any) -> bool:
    """`==`: null is a value, and values of different categories are never equal (also
    inside lists, which are equal item by item whether a row's JSON list or a constant's
    tuple holds them)."""
    if a is None or b is None:
        return a is None and b is None
    kind = ir.category_of(a)
    if kind != ir.category_of(b):
        return False
    if kind == "list":
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def compare(op: str, a: Any, b: Any, category: ir.Category) -> bool:
    a, b = coerce(a, category), coerce(b, category)
    if op == "==":
        return equal(a, b)
    if op == "!=":
        return not equal(a, b)
    if a is None or b is None:
        return False
    kind = ir.category_of(a)
    if kind != ir.category_of(b) or kind not in ("text", "number"):
        return False
    return _ORDER[op](a, b)


def arithmetic(op: str, a: Any, b: Any) -> Any:
    if ir.category_of(a) != "number" or ir.category_of(b) != "number":
        return None
    return a + b if op == "+" else a - b


def member(item: Any, container: Any, category: ir.Category) -> bool:
    item = coerce(item, category)
    if item is None or not isinstance(container, list | tuple):
        return False
    return any(equal(item, element) for element in container)


def _meta(scope: str, key: str) -> Evaluator:
    column = f"{scope}.meta"

    def value(row: Row) -> Any:
        meta = row.get(column)
        return meta.get(key) if isinstance(meta, dict) else None

    return value


def _copies(tier: str | None, location: str | None) -> Evaluator:
    def count(row: Row) -> int:
        replicas: Sequence[ReplicaView] = row.get("replicas") or ()
        return sum(
            1
            for r in replicas
            if r.state == "verified"
            and (tier is None or r.tier == tier)
            and (location is None or r.location == location)
        )

    return count


def _path_on(location: str, root: str | None) -> Evaluator:
    def path(row: Row) -> str | None:
        if root is None:
            return None
        for r in row.get("replicas") or ():
            if r.location == location and r.state in ("present", "verified"):
                return f"{root.rstrip('/')}/{r.path}"
        return None

    return path


def _pattern(operand: Evaluator, regex: str) -> Evaluator:
    search = re.compile(regex).search

    def matches(row: Row) -> bool:
        value = operand(row)
        return isinstance(value, str) and search(value) is not None

    return matches


def compile_python(node: ir.Node) -> Evaluator:
    """A function of a row giving the node's value (bool for conditions)."""
    match node:
        case ir.Const(value=value):
            return lambda row: value
        case ir.Field(name=name):
            return lambda row: row.get(name)
        case ir.Meta(scope=scope, key=key):
            return _meta(scope, key)
        case ir.Copies(tier=tier, location=location):
            return _copies(tier, location)
        case ir.PathOn(location=location, root=root):
            return _path_on(location, root)
        case ir.Arith(op=op, left=left, right=right):
            a, b = compile_python(left), compile_python(right)
            return lambda row: arithmetic(op, a(row), b(row))
        case ir.Neg(operand=operand):
            o = compile_python(operand)
            return lambda row: arithmetic("-", 0, o(row))
        case ir.Cmp(op=op, left=left, right=right, category=category):
            a, b = compile_python(left), compile_python(right)
            return lambda row: compare(op, a(row), b(row), category)
        case ir.Glob(operand=operand, regex=regex) | ir.Regex(operand=operand, regex=regex):
            return _pattern(compile_python(operand), regex)
        case ir.In(item=item, container=container, category=category):
            a, b = compile_python(item), compile_python(container)
            return lambda row: member(a(row), b(row), category)
        case ir.IsNull(operand=operand):
            o = compile_python(operand)
            return lambda row: o(row) is None
        case ir.And(items=items):
            parts = [compile_python(i) for i in items]
            return lambda row: all(p(row) for p in parts)
        case ir.Or(items=items):
            parts = [compile_python(i) for i in items]
            return lambda row: any(p(row) for p in parts)
        case ir.Not(operand=operand):
            o = compile_python(operand)
            return lambda row: not o(row)
    raise ir.Unsupported(node, f"no Python form for {type(node).__name__}")


def evaluate_constant(node: ir.Node) -> Any:
    """The value of a node whose operands are all constants."""
    return compile_python(node)({})
