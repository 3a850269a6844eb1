"""The predicate IR: what a rule's expression means, in a form every backend can compile.

The syntax tree says what was written (`age(experiment.end) > 90 days`,
`experiment.active`, `file.path like "*.h5"`); the IR says what is to be evaluated,
with everything that is the same for every file already decided: `now`, the
location-level functions (`usage`, `free`, ...), time literals in the site timezone,
units, and the derived attributes (`experiment.active` is a comparison of its start and
end with `now`). What is left is a small tree of fields, constants and operators, as
OPA's UCAST is, that the SQL, Mongo and Python backends compile side by side
(`sqlgen`, `mongo_filter`, `pyeval`), each saying `Unsupported` where it cannot express
a node so the planner evaluates that part in Python.

Values are in canonical units: sizes in bytes, durations in seconds, times in epoch
seconds (as the catalog stores them), percentages as fractions. Every comparison knows
the *category* of value it compares (text, number, bool, list): an untyped value (a
`file.meta.KEY`) of another category counts as null there, so `file.meta.x > 5` is
false, never an error, when `x` holds text, in all three backends alike.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from typing import Final, Literal

from policyd.grammar import ast

Category = Literal["text", "number", "bool", "list", "any"]

#: The fields of the catalog a predicate can read: name -> (category, may be null).
FIELDS: Final[dict[str, tuple[Category, bool]]] = {
    "file.path": ("text", False),
    "file.name": ("text", False),
    "file.dir": ("text", False),
    "file.ext": ("text", False),
    "file.size": ("number", True),
    "file.md5": ("text", True),
    "file.created": ("number", True),
    "file.modified": ("number", True),
    "experiment.name": ("text", False),
    "experiment.type": ("text", True),
    "experiment.station": ("text", True),
    "experiment.description": ("text", True),
    "experiment.start": ("number", True),
    "experiment.end": ("number", True),
    "experiment.users": ("list", True),
    "experiment.pinned_until": ("number", True),
    "location.name": ("text", False),
    "location.tier": ("text", False),
    "location.site": ("text", True),
}

#: The fields a file's row holds (the `location.*` ones exist in `locations where` only).
FILE_FIELDS: Final = tuple(name for name in FIELDS if not name.startswith("location."))

#: Attributes that are another field under a second name.
ALIASES: Final = {"station": "experiment.station"}


# ---- nodes


@dataclass(frozen=True, slots=True)
class Const:
    """A constant: str, int, float, bool, None or a tuple of constants' values."""

    value: object

    @property
    def category(self) -> Category:
        return category_of(self.value)


@dataclass(frozen=True, slots=True)
class Field:
    name: str

    @property
    def category(self) -> Category:
        return FIELDS[self.name][0]

    @property
    def nullable(self) -> bool:
        return FIELDS[self.name][1]


@dataclass(frozen=True, slots=True)
class Meta:
    """`file.meta.KEY` (scope "file") or `experiment.meta.KEY`: untyped, maybe missing."""

    scope: Literal["file", "experiment"]
    key: str


@dataclass(frozen=True, slots=True)
class Copies:
    """`copies(...)`: the file's verified replicas, on one tier or location if given."""

    tier: str | None = None
    location: str | None = None


@dataclass(frozen=True, slots=True)
class PathOn:
    """`path_on("LOC")`: the absolute path of the file's replica on a file:// location."""

    location: str
    root: str | None  # the location's folder, None when it is not a file:// location


@dataclass(frozen=True, slots=True)
class Arith:
    op: Literal["+", "-"]
    left: Node
    right: Node


@dataclass(frozen=True, slots=True)
class Neg:
    operand: Node


@dataclass(frozen=True, slots=True)
class Cmp:
    """`left OP right` comparing values of `category` (an untyped side counts as null
    when its value is of another category)."""

    op: Literal["==", "!=", "<", "<=", ">", ">="]
    left: Node
    right: Node
    category: Category


@dataclass(frozen=True, slots=True)
class Glob:
    """`like`: `regex` is the glob as an anchored, portable regular expression;
    `name_only` says the glob had no `/` and so matched the last segment only."""

    operand: Node
    glob: str
    regex: str
    name_only: bool


@dataclass(frozen=True, slots=True)
class Regex:
    """`matches`: `regex` is the user's pattern made to mean the same in every engine."""

    operand: Node
    pattern: str
    regex: str


@dataclass(frozen=True, slots=True)
class In:
    item: Node
    container: Node
    category: Category


@dataclass(frozen=True, slots=True)
class IsNull:
    operand: Node


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Not:
    operand: Node


Node = (
    Const
    | Field
    | Meta
    | Copies
    | PathOn
    | Arith
    | Neg
    | Cmp
    | Glob
    | Regex
    | In
    | IsNull
    | And
    | Or
    | Not
)

TRUE: Final = Const(True)
FALSE: Final = Const(False)


class Unsupported(Exception):
    """A backend cannot express a node; the planner evaluates that part in Python."""

    def __init__(self, node: Node, reason: str) -> None:
        super().__init__(reason)
        self.node = node
        self.reason = reason


def category_of(value: object) -> Category:
    """The category of a runtime value (None is `any`: it meets every category)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, tuple | list):
        return "list"
    return "any"


def value_category(node: Node) -> Category:
    """The category a value node yields, `any` when only evaluation tells."""
    match node:
        case Const():
            return node.category
        case Field():
            return node.category
        case Copies() | Arith() | Neg():
            return "number"
        case PathOn():
            return "text"
        case Meta():
            return "any"
    return "bool"


def children(node: Node) -> tuple[Node, ...]:
    match node:
        case Arith(left=a, right=b) | Cmp(left=a, right=b):
            return (a, b)
        case In(item=a, container=b):
            return (a, b)
        case (
            Neg(operand=o) | Glob(operand=o) | Regex(operand=o) | IsNull(operand=o) | Not(operand=o)
        ):
            return (o,)
        case And(items=items) | Or(items=items):
            return items
    return ()


def rewrite(node: Node, leaf: Callable[[Node], Node | None]) -> Node:
    """`node` with each leaf (a node without children) replaced by `leaf(leaf_node)`
    where that is not None, and every rebuilt node folded again: a backend that knows
    some fields' values (Mongo knows the experiment of a collection) substitutes
    constants and is left with less to compile. Nothing is rearranged (see `fold`):
    the other backends evaluate the comparisons as they were written."""
    match node:
        case Arith(op=op, left=a, right=b):
            return _refold(Arith(op, rewrite(a, leaf), rewrite(b, leaf)))
        case Neg(operand=o):
            return _refold(Neg(rewrite(o, leaf)))
        case Cmp(op=op, left=a, right=b, category=category):
            return _refold(Cmp(op, rewrite(a, leaf), rewrite(b, leaf), category))
        case Glob(operand=o):
            return _refold(Glob(rewrite(o, leaf), node.glob, node.regex, node.name_only))
        case Regex(operand=o):
            return _refold(Regex(rewrite(o, leaf), node.pattern, node.regex))
        case In(item=a, container=b, category=category):
            return _refold(In(rewrite(a, leaf), rewrite(b, leaf), category))
        case IsNull(operand=o):
            return _refold(IsNull(rewrite(o, leaf)))
        case And(items=items):
            return conjunction([rewrite(i, leaf) for i in items])
        case Or(items=items):
            return disjunction([rewrite(i, leaf) for i in items])
        case Not(operand=o):
            return _refold(negation(rewrite(o, leaf)))
    replaced = leaf(node)
    return node if replaced is None else replaced


def _refold(node: Node) -> Node:
    return fold(node, rearrange=False)


def walk(node: Node) -> Iterator[Node]:
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        stack.extend(children(current))


def conjuncts(node: Node) -> tuple[Node, ...]:
    return node.items if isinstance(node, And) else (node,)


def conjunction(items: list[Node] | tuple[Node, ...]) -> Node:
    """`And` of `items`, flattened and folded (an empty conjunction is true)."""
    flat: list[Node] = []
    for item in items:
        for part in conjuncts(item):
            if part == FALSE:
                return FALSE
            if part != TRUE:
                flat.append(part)
    if not flat:
        return TRUE
    return flat[0] if len(flat) == 1 else And(tuple(flat))


def disjunction(items: list[Node] | tuple[Node, ...]) -> Node:
    flat: list[Node] = []
    for item in items:
        for part in item.items if isinstance(item, Or) else (item,):
            if part == TRUE:
                return TRUE
            if part != FALSE:
                flat.append(part)
    if not flat:
        return FALSE
    return flat[0] if len(flat) == 1 else Or(tuple(flat))


def negation(node: Node) -> Node:
    if isinstance(node, Const) and isinstance(node.value, bool):
        return Const(not node.value)
    if isinstance(node, Not):
        return node.operand
    return Not(node)


# ---- patterns


def glob_regex(glob: str) -> tuple[str, bool]:
    """The glob of `like` as a regex searched in every backend, and whether it is
    name-only (spec/rules.md section 4: `*` any characters but `/`, `**` any including
    `/`, `a/**/b` also matches `a/b`, `?` one character but `/`, `\\` escapes; a glob
    without `/` matches the last segment)."""
    name_only = "/" not in glob.replace("\\/", "")
    out: list[str] = []
    i = 0
    n = len(glob)
    while i < n:
        ch = glob[i]
        if ch == "\\" and i + 1 < n:
            out.append(re.escape(glob[i + 1]))
            i += 2
        elif glob.startswith("**", i):
            j = i + 2
            while j < n and glob[j] == "*":
                j += 1
            at_start = i == 0 or glob[i - 1] == "/"
            if name_only:
                out.append("[^/]*")  # a name holds no `/`: `**` is `*` there
            elif at_start and j < n and glob[j] == "/":
                out.append("(?:.*/)?")  # `**/` also matches no folder at all
                j += 1
            else:
                out.append(".*")
            i = j
        elif ch == "*":
            out.append("[^/]*")
            i += 1
        elif ch == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(ch))
            i += 1
    body = "".join(out)
    anchor = "(?:^|/)" if name_only else "^"
    return f"(?s){anchor}{body}\\Z", name_only


def portable_regex(pattern: str) -> str:
    """A `matches` pattern as Python and PostgreSQL both read it: `.` matches a newline
    in both (`(?s)`; PostgreSQL's default), and `$` means the end of the text (Python's
    `$` would also match before a final newline)."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            in_class = ch != "]" or pattern[i - 1] in "[^"
        elif ch == "[":
            in_class = True
        elif ch == "$":
            ch = "\\Z"
        out.append(ch)
        i += 1
    return "(?s)" + "".join(out)


# ---- lowering the syntax tree


LocationFunction = Callable[[str, str, str | None], object]


@dataclass(frozen=True)
class Bindings:
    """What is the same for every file of one evaluation.

    `location_value(function, location, station)` gives `usage`, `used`, `free` and
    `time_to_full` (the planner's view of storage, including its own plan so far);
    `location_roots` the folder of each file:// location, for `path_on`.
    """

    now: float
    tz: tzinfo
    location_value: LocationFunction = field(default=lambda fn, loc, station: None)
    location_roots: dict[str, str] = field(default_factory=dict)


class LoweringError(Exception):
    """An expression `check` should have refused (the planner is given checked rules)."""


def time_value(text: str, tz: tzinfo) -> float:
    """A time literal as epoch seconds; without an offset it is in the site timezone."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.timestamp()


_CATEGORY_OF_KIND: Final[dict[str, Category]] = {
    "text": "text",
    "number": "number",
    "size": "number",
    "duration": "number",
    "percent": "number",
    "time": "number",
    "bool": "bool",
    "list": "list",
}


class _Lowerer:
    def __init__(self, bindings: Bindings) -> None:
        self.b = bindings

    def literal(self, node: ast.Literal) -> Const:
        if node.kind == "time":
            return Const(time_value(str(node.value), self.b.tz))
        if node.kind == "list":
            items = tuple(self.value(item) for item in node.value)  # type: ignore[attr-defined]
            values = []
            for item in items:
                if not isinstance(item, Const):
                    raise LoweringError("a list holds constants only")
                values.append(item.value)
            return Const(tuple(values))
        return Const(node.value)

    def attribute(self, path: tuple[str, ...]) -> Node:
        name = ".".join(path)
        name = ALIASES.get(name, name)
        if name == "now":
            return Const(self.b.now)
        if name == "experiment.active":
            start, end, now = Field("experiment.start"), Field("experiment.end"), Const(self.b.now)
            return conjunction(
                [
                    Cmp("<=", start, now, "number"),
                    disjunction([IsNull(end), Cmp("<=", now, end, "number")]),
                ]
            )
        if name == "experiment.pinned":
            return Cmp(">", Field("experiment.pinned_until"), Const(self.b.now), "number")
        if name in FIELDS:
            return Field(name)
        if len(path) >= 3 and path[1] == "meta" and path[0] in ("file", "experiment"):
            return Meta(path[0], ".".join(path[2:]))  # type: ignore[arg-type]
        raise LoweringError(f"unknown attribute {name}")

    def call(self, node: ast.Call) -> Node:
        args = [self.value(a) for a in node.args]
        kwargs = {k.name: self.value(k.value) for k in node.kwargs}
        text_kwargs = {k: v.value for k, v in kwargs.items() if isinstance(v, Const)}
        if node.name == "age":
            return fold(Arith("-", Const(self.b.now), args[0]))
        if node.name == "copies":
            return Copies(text_kwargs.get("tier"), text_kwargs.get("location"))  # type: ignore[arg-type]
        location = args[0].value if args and isinstance(args[0], Const) else None
        if not isinstance(location, str):
            raise LoweringError(f"{node.name} needs a location name")
        if node.name == "path_on":
            return PathOn(location, self.b.location_roots.get(location))
        station = text_kwargs.get("station")
        value = self.b.location_value(node.name, location, station)  # type: ignore[arg-type]
        return Const(value)

    def value(self, node: ast.Expr) -> Node:
        match node:
            case ast.Literal():
                return self.literal(node)
            case ast.Attribute(path=path):
                return self.attribute(path)
            case ast.Index(target=target, key=key):
                if len(target.path) == 2 and target.path[1] == "meta":
                    return Meta(target.path[0], key)  # type: ignore[arg-type]
                raise LoweringError("only meta takes [KEY]")
            case ast.Call():
                return self.call(node)
            case ast.Unary(operand=operand):
                return fold(Neg(self.value(operand)))
            case ast.Binary(op=op, left=left, right=right):
                return fold(Arith(op, self.value(left), self.value(right)))
        return self.condition(node)

    def condition(self, node: ast.Expr) -> Node:
        match node:
            case ast.And(left=a, right=b):
                return conjunction([self.condition(a), self.condition(b)])
            case ast.Or(left=a, right=b):
                return disjunction([self.condition(a), self.condition(b)])
            case ast.Not(operand=o):
                return fold(negation(self.condition(o)))
            case ast.IsNull(operand=o, negated=negated):
                test = fold(IsNull(self.value(o)))
                return fold(negation(test)) if negated else test
            case ast.Compare(op=op, left=left, right=right):
                return compare(op, self.value(left), self.value(right))
            case ast.Like(operand=o, pattern=pattern):
                regex, name_only = glob_regex(pattern)
                return fold(Glob(self.value(o), pattern, regex, name_only))
            case ast.Matches(operand=o, pattern=pattern):
                return fold(Regex(self.value(o), pattern, portable_regex(pattern)))
            case ast.In(item=item, container=container):
                item_node, container_node = self.value(item), self.value(container)
                if isinstance(container_node, Const) and isinstance(container_node.value, tuple):
                    element = _list_category(container_node.value)
                else:
                    element = "text" if isinstance(container_node, Field) else "any"
                category = value_category(item_node)
                return fold(
                    In(item_node, container_node, element if category == "any" else category)
                )
        lowered = self.value(node)
        if isinstance(lowered, Const):
            return Const(lowered.value is True)
        if isinstance(lowered, Meta | Field):
            return compare("==", lowered, TRUE)
        return lowered


def _list_category(values: tuple[object, ...]) -> Category:
    for value in values:
        if value is not None:
            return category_of(value)
    return "any"


def compare(op: str, left: Node, right: Node) -> Node:
    """A comparison of two values; `== null` and `!= null` become null tests."""
    if left == Const(None) or right == Const(None):
        other = right if left == Const(None) else left
        if op in ("==", "!="):
            test = fold(IsNull(other))
            return test if op == "==" else fold(negation(test))
        return FALSE
    category = value_category(left)
    if category == "any":
        category = value_category(right)
    return fold(Cmp(op, left, right, category))  # type: ignore[arg-type]


_FLIP: Final = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def fold(node: Node, rearrange: bool = True) -> Node:
    """Evaluate what is constant, and put `now - X > D` as `X < now - D` so that the
    database can use an index on X. That is exact in real numbers, not always in
    floating point: `rearrange=False` leaves it out where only one backend would see
    the new form (and so could disagree with the others at the last bit)."""
    from policyd.rules.pyeval import evaluate_constant

    if all(isinstance(c, Const) for c in children(node)) and children(node):
        return Const(evaluate_constant(node))
    if isinstance(node, IsNull) and isinstance(node.operand, Field) and not node.operand.nullable:
        return FALSE
    if isinstance(node, Cmp) and node.category == "number":
        left, right = node.left, node.right
        if isinstance(left, Const) and not isinstance(right, Const):
            return fold(Cmp(_FLIP[node.op], right, left, "number"), rearrange)  # type: ignore[arg-type]
        if (
            rearrange
            and isinstance(left, Arith)
            and isinstance(right, Const)
            and isinstance(left.left, Const)
            and left.op == "-"
            and isinstance(right.value, int | float)
            and isinstance(left.left.value, int | float)
            and node.op not in ("==", "!=")
        ):
            # c - X > d  <=>  X < c - d
            bound = Const(left.left.value - right.value)
            return Cmp(_FLIP[node.op], left.right, bound, "number")  # type: ignore[arg-type]
    return node


def lower(expr: ast.Expr, bindings: Bindings, station: str | None = None) -> Node:
    """The IR of a `where` (or any condition), scoped to `station` when the rule's file
    names one (spec/rules.md section 2)."""
    node = _Lowerer(bindings).condition(expr)
    if station is None:
        return node
    return conjunction([Cmp("==", Field("experiment.station"), Const(station), "text"), node])


def lower_value(expr: ast.Expr, bindings: Bindings) -> Node:
    """The IR of a value (`order by`, a run rule's `with`)."""
    return _Lowerer(bindings).value(expr)
