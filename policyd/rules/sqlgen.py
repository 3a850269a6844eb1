"""The SQL backend of the predicate IR: one SQLAlchemy Core expression for SQLite and
PostgreSQL alike.

SQL's three-valued logic is what makes a naive translation wrong: `NOT (end > :now)`
is NULL, not true, when `end` is NULL. So every condition compiles to a two-valued
expression: a comparison is guarded by `x IS NOT NULL` for each operand that may be
null, equality uses `IS NOT DISTINCT FROM` where null is a value, and `NOT` then means
what spec/rules.md section 4 says. The few things the two databases spell differently
(JSON metadata, list membership, byte-order text comparison, globs) are small
constructs below with one rendering per dialect, so the compiler itself has one code
path. What SQL cannot express raises `ir.Unsupported`; `pushdown` keeps such parts of
a conjunction for the Python backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    FromClause,
    and_,
    case,
    false,
    func,
    literal,
    literal_column,
    not_,
    null,
    or_,
    select,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.types import Boolean, Double, Text

from policyd.catalog.schema import locations, replicas
from policyd.rules import ir

# ---- dialect constructs


class MetaValue(ColumnElement[Any]):
    """A metadata key's value when it is of `category`, else NULL."""

    inherit_cache = True

    def __init__(self, column: ColumnElement[Any], key: str, category: ir.Category) -> None:
        self.column = column
        self.key = key
        self.category = category
        self.type = {"number": Double(), "bool": Boolean()}.get(category, Text())


class MetaIsNull(ColumnElement[bool]):
    """Whether a metadata key is missing or JSON null."""

    inherit_cache = True
    type = Boolean()

    def __init__(self, column: ColumnElement[Any], key: str) -> None:
        self.column = column
        self.key = key


class ListContains(ColumnElement[bool]):
    """Whether a JSON list column holds `item` (text)."""

    inherit_cache = True
    type = Boolean()

    def __init__(self, column: ColumnElement[Any], item: ColumnElement[Any]) -> None:
        self.column = column
        self.item = item


class ByteOrder(ColumnElement[str]):
    """Text compared by code point, as Python and SQLite do; PostgreSQL databases often
    have a natural-language collation, where `'a' < 'B'`."""

    inherit_cache = True
    type = Text()

    def __init__(self, inner: ColumnElement[Any]) -> None:
        self.inner = inner


class Wildcard(Enum):
    """A glob's wildcard, kept apart from literal text (an escaped `\\*` is text)."""

    ANY = "any characters"
    ONE = "one character"


GlobToken = str | Wildcard


class GlobMatch(ColumnElement[bool]):
    """A glob whose only wildcards are "any characters" and "one character"."""

    inherit_cache = True
    type = Boolean()

    def __init__(self, operand: ColumnElement[Any], tokens: tuple[GlobToken, ...]) -> None:
        self.operand = operand
        self.tokens = tokens


_SQLITE_JSON_TYPES: Final = {
    "text": "('text')",
    "number": "('integer', 'real')",
    "bool": "('true', 'false')",
}
_PG_JSON_TYPES: Final = {"text": "string", "number": "number", "bool": "boolean"}
_PG_CASTS: Final = {"text": "", "number": "::double precision", "bool": "::boolean"}


def _sqlite_path(compiler: SQLCompiler, key: str) -> str:
    return compiler.process(literal('$."' + key + '"'))


@compiles(MetaValue, "sqlite")
def _meta_sqlite(element: MetaValue, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    path = _sqlite_path(compiler, element.key)
    types = _SQLITE_JSON_TYPES[element.category]
    return (
        f"(CASE WHEN json_type({column}, {path}) IN {types} "
        f"THEN json_extract({column}, {path}) END)"
    )


@compiles(MetaValue, "postgresql")
def _meta_pg(element: MetaValue, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    key = compiler.process(literal(element.key), **kw)
    kind = _PG_JSON_TYPES[element.category]
    cast = _PG_CASTS[element.category]
    return (
        f"(CASE WHEN jsonb_typeof({column} -> {key}) = '{kind}' "
        f"THEN ({column} ->> {key}){cast} END)"
    )


@compiles(MetaIsNull, "sqlite")
def _meta_null_sqlite(element: MetaIsNull, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    path = _sqlite_path(compiler, element.key)
    return f"(coalesce(json_type({column}, {path}), 'null') = 'null')"


@compiles(MetaIsNull, "postgresql")
def _meta_null_pg(element: MetaIsNull, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    key = compiler.process(literal(element.key), **kw)
    return f"(coalesce(jsonb_typeof({column} -> {key}), 'null') = 'null')"


@compiles(ListContains, "sqlite")
def _contains_sqlite(element: ListContains, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    item = compiler.process(element.item, **kw)
    return (
        f"EXISTS (SELECT 1 FROM json_each({column}) AS j "
        f"WHERE j.type = 'text' AND j.value = {item})"
    )


@compiles(ListContains, "postgresql")
def _contains_pg(element: ListContains, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.column, **kw)
    item = compiler.process(element.item, **kw)
    return f"({column} @> jsonb_build_array(CAST({item} AS TEXT)))"


@compiles(ByteOrder)
def _byte_order(element: ByteOrder, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.inner, **kw)


@compiles(ByteOrder, "postgresql")
def _byte_order_pg(element: ByteOrder, compiler: SQLCompiler, **kw: Any) -> str:
    return f'({compiler.process(element.inner, **kw)} COLLATE "C")'


def _pattern_text(
    tokens: tuple[GlobToken, ...], wildcards: dict[Wildcard, str], escape: dict[str, str]
) -> str:
    return "".join(
        wildcards[t] if isinstance(t, Wildcard) else "".join(escape.get(c, c) for c in t)
        for t in tokens
    )


def _glob_sqlite_text(tokens: tuple[GlobToken, ...]) -> str:
    escape = {"*": "[*]", "?": "[?]", "[": "[[]"}
    return _pattern_text(tokens, {Wildcard.ANY: "*", Wildcard.ONE: "?"}, escape)


def _like_text(tokens: tuple[GlobToken, ...]) -> str:
    escape = {"%": "\\%", "_": "\\_", "\\": "\\\\"}
    return _pattern_text(tokens, {Wildcard.ANY: "%", Wildcard.ONE: "_"}, escape)


@compiles(GlobMatch, "sqlite")
def _glob_sqlite(element: GlobMatch, compiler: SQLCompiler, **kw: Any) -> str:
    operand = compiler.process(element.operand, **kw)
    pattern = compiler.process(literal(_glob_sqlite_text(element.tokens)), **kw)
    return f"({operand} GLOB {pattern})"


@compiles(GlobMatch, "postgresql")
def _glob_pg(element: GlobMatch, compiler: SQLCompiler, **kw: Any) -> str:
    operand = compiler.process(element.operand, **kw)
    pattern = compiler.process(literal(_like_text(element.tokens)), **kw)
    return f"({operand} LIKE {pattern} ESCAPE '\\')"


def glob_tokens(node: ir.Glob) -> tuple[GlobToken, ...] | None:
    """The glob as literal runs and the wildcards `*` (any characters) and `?` (one), or
    None when it needs the regex: `*` and `?` are only "any" where they cannot meet a
    `/` (a name-only glob, matched on the name), and `**` is "any" except in `/**/`
    and a leading `**/`, which also match no folder at all."""
    tokens: list[GlobToken] = []
    text = node.glob
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and i + 1 < len(text):
            tokens.append(text[i + 1])
            i += 2
        elif text.startswith("**", i):
            j = i + 2
            while j < len(text) and text[j] == "*":
                j += 1
            if (i == 0 or text[i - 1] == "/") and j < len(text) and text[j] == "/":
                return None
            tokens.append(Wildcard.ANY)
            i = j
        elif ch in "*?":
            if not node.name_only:
                return None
            tokens.append(Wildcard.ANY if ch == "*" else Wildcard.ONE)
            i += 1
        else:
            tokens.append(ch)
            i += 1
    merged: list[GlobToken] = []
    for token in tokens:
        if merged and isinstance(token, str) and isinstance(merged[-1], str):
            merged[-1] += token
        else:
            merged.append(token)
    return tuple(merged)


# ---- the compiler


#: Location ids below this have a bit in the files' replica masks (migration 0003).
MASKED_IDS = 63


@dataclass(frozen=True)
class CatalogLocations:
    """The catalog's locations (name -> id and tier), so that replica tests compile to
    bit tests of the file row's `verified_on` and `held_on` masks instead of
    correlated subqueries over replicas."""

    ids: dict[str, int]
    tiers: dict[str, str | None]

    def matching(self, tier: str | None, location: str | None) -> list[int]:
        return [
            id_
            for name, id_ in self.ids.items()
            if (tier is None or self.tiers.get(name) == tier) and location in (None, name)
        ]


def mask_literal(ids: list[int]) -> ColumnElement[Any]:
    return literal_column(str(sum(1 << i for i in set(ids))), BigInteger)


def has_bit(mask: ColumnElement[Any], ids: list[int]) -> ColumnElement[bool]:
    """Whether `mask` has any of the bits of `ids` (all below MASKED_IDS)."""
    return mask.op("&", return_type=BigInteger)(mask_literal(ids)) != 0


def bit_count(mask: ColumnElement[Any], ids: list[int]) -> ColumnElement[Any]:
    """How many of the bits of `ids` (all below MASKED_IDS) `mask` has."""
    if not ids:
        return literal_column("0", BigInteger)
    one = literal_column("1", BigInteger)
    parts = [
        mask.op(">>", return_type=BigInteger)(literal_column(str(i), BigInteger)).op(
            "&", return_type=BigInteger
        )(one)
        for i in sorted(set(ids))
    ]
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


@dataclass(frozen=True)
class Sources:
    """The tables (or aliases) a predicate reads: the file's row and its experiment's,
    and, when known, the catalog's locations (see CatalogLocations)."""

    files: FromClause
    experiments: FromClause
    locations: CatalogLocations | None = None

    def column(self, name: str) -> ColumnElement[Any]:
        scope, attribute = name.split(".", 1)
        table = self.files if scope == "file" else self.experiments
        if name == "file.dir":
            path, fname = table.c.path, table.c.name
            return case(
                (func.length(path) == func.length(fname), literal("")),
                else_=func.substr(path, 1, func.length(path) - func.length(fname) - 1),
            )
        return table.c[attribute]


def row_columns(sources: Sources) -> list[ColumnElement[Any]]:
    """Every field a predicate reads, labelled with its IR name, so that a result row's
    mapping is a row for the Python backend (add `replicas` for `copies()`)."""
    return [*file_columns(sources), *experiment_columns(sources)]


def file_columns(sources: Sources, *, meta: bool = True) -> list[ColumnElement[Any]]:
    """The file's own fields of a row, with its experiment's id (a planner reads the
    few experiments once and joins them to the many files in Python). Without `meta`,
    `file.meta` is null: decoding a JSON column per file is a planner's dearest column,
    and a plan whose rules read it only in SQL has no use for it."""
    columns = [
        sources.files.c.id.label("file.id"),
        sources.experiments.c.id.label("experiment.id"),
    ]
    columns += [
        sources.column(name).label(name) for name in ir.FILE_FIELDS if name.startswith("file.")
    ]
    return [*columns, (sources.files.c.meta if meta else null()).label("file.meta")]


def experiment_columns(sources: Sources) -> list[ColumnElement[Any]]:
    """The experiment's fields of a row."""
    columns = [
        sources.column(name).label(name)
        for name in ir.FILE_FIELDS
        if name.startswith("experiment.")
    ]
    return [*columns, sources.experiments.c.meta.label("experiment.meta")]


@dataclass
class Pushdown:
    """A condition split for the database: `sql` (None: every row) and the `residual`
    left for Python (None: nothing), with why each residual part stayed behind."""

    sql: ColumnElement[bool] | None
    residual: ir.Node | None
    reasons: list[str] = field(default_factory=list)


class SqlCompiler:
    def __init__(self, sources: Sources) -> None:
        self.src = sources

    # values: (expression, may it be NULL)

    def value(self, node: ir.Node, category: ir.Category) -> tuple[ColumnElement[Any], bool]:
        match node:
            case ir.Const(value=None):
                return literal(None), True
            case ir.Const(value=bool() as flag):
                return (true() if flag else false()), False
            case ir.Const(value=str() | int() | float() as value):
                return literal(value), False
            case ir.Field(name=name):
                if node.category == "list":
                    raise ir.Unsupported(node, f"{name} is a list; only `in` reads it")
                return self.src.column(name), node.nullable
            case ir.Meta(scope=scope, key=key):
                if category not in _PG_JSON_TYPES:
                    raise ir.Unsupported(node, "comparing two untyped metadata values")
                if '"' in key or "\\" in key:
                    raise ir.Unsupported(node, f"metadata key {key!r} holds a quote")
                column = self.src.column(f"{scope}.meta")
                return MetaValue(column, key, category), True
            case ir.Copies(tier=tier, location=location):
                return self.copies(tier, location), False
            case ir.Arith(op=op, left=left, right=right):
                a, an = self.value(left, "number")
                b, bn = self.value(right, "number")
                return (a + b if op == "+" else a - b), an or bn
            case ir.Neg(operand=operand):
                a, an = self.value(operand, "number")
                return -a, an
        raise ir.Unsupported(node, f"{type(node).__name__} has no SQL form")

    def copies(self, tier: str | None, location: str | None) -> ColumnElement[Any]:
        if self.src.locations is not None:
            ids = self.src.locations.matching(tier, location)
            if all(i < MASKED_IDS for i in ids):
                return bit_count(self.src.files.c.verified_on, ids)
        query = (
            select(func.count())
            .select_from(replicas.join(locations, locations.c.id == replicas.c.location_id))
            .where(replicas.c.file_id == self.src.files.c.id, replicas.c.state == "verified")
        )
        if tier is not None:
            query = query.where(locations.c.tier == tier)
        if location is not None:
            query = query.where(locations.c.name == location)
        return query.scalar_subquery()

    # conditions: never NULL

    def condition(self, node: ir.Node) -> ColumnElement[bool]:
        match node:
            case ir.Const(value=bool() as flag):
                return true() if flag else false()
            case ir.And(items=items):
                return and_(*(self.condition(i) for i in items))
            case ir.Or(items=items):
                return or_(*(self.condition(i) for i in items))
            case ir.Not(operand=operand):
                return not_(self.condition(operand))
            case ir.IsNull(operand=operand):
                return self.is_null(operand)
            case ir.Cmp():
                return self.compare(node)
            case ir.Glob():
                return self.glob(node)
            case ir.Regex(operand=operand, regex=regex):
                value, nullable = self.value(operand, "text")
                return _guarded(value.regexp_match(regex), (value, nullable))
            case ir.In():
                return self.member(node)
        raise ir.Unsupported(node, f"{type(node).__name__} is not a condition in SQL")

    def is_null(self, operand: ir.Node) -> ColumnElement[bool]:
        if isinstance(operand, ir.Meta):
            return MetaIsNull(self.src.column(f"{operand.scope}.meta"), operand.key)
        if isinstance(operand, ir.Field):
            column = self.src.column(operand.name)
            return column.is_(None) if operand.nullable else false()
        value, nullable = self.value(operand, ir.value_category(operand))
        return value.is_(None) if nullable else false()

    def compare(self, node: ir.Cmp) -> ColumnElement[bool]:
        category = node.category
        if category in ("list", "any"):
            raise ir.Unsupported(node, "a comparison whose kind only evaluation tells")
        a, an = self.value(node.left, category)
        b, bn = self.value(node.right, category)
        if node.op in ("==", "!="):
            if an or bn:
                return a.is_not_distinct_from(b) if node.op == "==" else a.is_distinct_from(b)
            return a == b if node.op == "==" else a != b
        if category == "bool":
            return false()
        if category == "text":
            a, b = ByteOrder(a), ByteOrder(b)
        test = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[node.op]
        return _guarded(test, (a, an), (b, bn))

    def glob(self, node: ir.Glob) -> ColumnElement[bool]:
        fast = _fast_glob(node)
        if fast is not None:
            target, tokens = fast
            return GlobMatch(self.src.column(target), tokens)
        value, nullable = self.value(node.operand, "text")
        return _guarded(value.regexp_match(node.regex), (value, nullable))

    def member(self, node: ir.In) -> ColumnElement[bool]:
        item, nullable = self.value(node.item, node.category)
        container = node.container
        if isinstance(container, ir.Const) and isinstance(container.value, tuple):
            if node.category == "any":
                raise ir.Unsupported(node, "membership whose kind only evaluation tells")
            # an element of another category never equals the (coerced) item
            values = [v for v in container.value if ir.category_of(v) == node.category]
            if not values:
                return false()
            return _guarded(item.in_(values), (item, nullable))
        if isinstance(container, ir.Field) and container.name == "experiment.users":
            if node.category != "text":
                return false()
            column = self.src.column(container.name)
            return _guarded(ListContains(column, item), (item, nullable), (column, True))
        raise ir.Unsupported(node, "membership in a list that is not a constant or a field")


def _fast_glob(node: ir.Glob) -> tuple[str, tuple[GlobToken, ...]] | None:
    """The column and tokens of a glob matched with GLOB or LIKE, or None when it
    needs the regular expression."""
    tokens = glob_tokens(node)
    operand = node.operand
    if tokens is None or not isinstance(operand, ir.Field):
        return None
    if operand.name == "file.path" or (operand.name, node.name_only) == ("file.name", True):
        return ("file.name" if node.name_only else "file.path"), tokens
    return None


def _cost(node: ir.Node) -> int:
    """A rank of what a condition costs per row: column tests 0, JSON parsing and list
    membership 1, a regular expression 2 (on SQLite a call back into Python), a
    `copies()` count 3 (a correlated subquery)."""
    worst = 0
    for part in ir.walk(node):
        match part:
            case ir.Copies():
                worst = max(worst, 3)
            case ir.Regex():
                worst = max(worst, 2)
            case ir.Glob():
                worst = max(worst, 0 if _fast_glob(part) is not None else 2)
            case ir.Meta() | ir.In(container=ir.Field()):
                worst = max(worst, 1)
    return worst


def _guarded(
    test: ColumnElement[bool], *operands: tuple[ColumnElement[Any], bool]
) -> ColumnElement[bool]:
    guards = [value.is_not(None) for value, nullable in operands if nullable]
    return and_(*guards, test) if guards else test


def pushdown(node: ir.Node, sources: Sources) -> Pushdown:
    """The parts of a conjunction SQL can express, and the rest for Python.

    The pushed parts go cheapest first (`_cost`, ties in their order): every part is
    two-valued, so the order does not change the result, and SQLite evaluates `AND`
    from the left and stops at the first false one, so a plain column test in front
    spares most rows the regular expression or the subquery behind it."""
    compiler = SqlCompiler(sources)
    pushed: list[tuple[int, ColumnElement[bool]]] = []
    left: list[ir.Node] = []
    reasons: list[str] = []
    for part in ir.conjuncts(node):
        try:
            pushed.append((_cost(part), compiler.condition(part)))
        except ir.Unsupported as exc:
            left.append(part)
            reasons.append(exc.reason)
    pushed.sort(key=lambda item: item[0])
    sql = and_(*(condition for _, condition in pushed)) if pushed else None
    residual = ir.conjunction(left) if left else None
    return Pushdown(sql, residual, reasons)


__all__ = [
    "MASKED_IDS",
    "CatalogLocations",
    "GlobToken",
    "Pushdown",
    "Sources",
    "SqlCompiler",
    "Wildcard",
    "bit_count",
    "experiment_columns",
    "file_columns",
    "glob_tokens",
    "has_bit",
    "pushdown",
    "row_columns",
]
