"""The MongoDB backend of the predicate IR: a query document over the DM catalog.

The DM catalog keeps one collection per experiment, each document a file record
(experimentFilePath, fileSize, md5Sum, fileCreationTime, fileModificationTime, and
any other key as file metadata). So a predicate is compiled for one experiment at a
time: `bind` replaces the `experiment.*` fields and `experiment.meta.KEY` by that
experiment's values and folds again, and what is left reads the document only.

Mongo's query language has rules of its own that a direct translation would inherit:
`{k: 5}` also matches an array holding 5, `{k: null}` also matches a missing key and
an array holding null, `$ne` and `$nin` match documents without the key, `$gt` keeps to
its operand's type bracket (and mongomock lets `{k: 1}` match `true`). So every
comparison here says exactly which values it accepts: a scalar of the compared
category (`$type`, never an array), then the test. A condition is then true or false
for every document, never "unknown", and `not` is `$nor`, the exact complement, which
is what spec/rules.md section 4 asks of `not`. Values of another category than the
comparison's count as null, as `pyeval.coerce` says; bools are not numbers.

`file.name`, `file.dir` and `file.ext` are not stored: equality, `in` and name-only
globs on them become regular expressions on experimentFilePath that mean exactly the
same; the rest (ordering on them, `matches` on them, arithmetic on fields, comparing
two values of the document, `copies()`, `path_on()`) raises `ir.Unsupported`, and
`pushdown` leaves such parts of a conjunction to the Python backend, which evaluates
them on `document_row`.

Assumed of the documents, as the DM writes them: experimentFilePath is a text, times
are epoch seconds, values are JSON types, and the collection has no collation of its
own (text compares by code point, as in Python; regular expressions ignore collation).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from policyd.catalog.records import FILE_KEYS, name_and_ext
from policyd.rules import ir, pyeval

Query = dict[str, Any]

PATH: Final = "experimentFilePath"

#: The catalog fields a DM file document stores, with the key that holds each.
DOCUMENT_KEYS: Final[dict[str, str]] = {
    "file.path": PATH,
    "file.size": "fileSize",
    "file.md5": "md5Sum",
    "file.created": "fileCreationTime",
    "file.modified": "fileModificationTime",
}

#: The fields derived from experimentFilePath.
DERIVED: Final = frozenset({"file.name", "file.dir", "file.ext"})

_BSON_TYPES: Final[dict[str, str]] = {"text": "string", "number": "number", "bool": "bool"}
_ORDER_OPERATORS: Final = {"<": "$lt", "<=": "$lte", ">": "$gt", ">=": "$gte"}
_FLIP: Final = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}

#: A query that matches every document, and one that matches none (every document has
#: an `_id`; an empty `$in` holds none of them).
EVERYTHING: Final[Query] = {}
NOTHING: Final[Query] = {"_id": {"$in": []}}

_NOT_ARRAY: Final = {"$not": {"$type": "array"}}


# ---- binding one experiment


def _constant(value: Any) -> Any:
    """A row value as an `ir.Const` holds it: lists as tuples."""
    return tuple(value) if isinstance(value, list) else value


def bind(node: ir.Node, experiment: Mapping[str, Any]) -> ir.Node:
    """`node` for the files of one experiment: its fields and metadata become constants.

    `experiment` maps IR names (`experiment.end`, `experiment.users`, ...) to values,
    and `experiment.meta` to its metadata, as a `pyeval` row does. The keys a DM file
    document models (fileSize, _id, ...) are no metadata key, as in the catalog, so
    `file.meta.fileSize` is null here too.
    """
    meta = experiment.get("experiment.meta")

    def leaf(n: ir.Node) -> ir.Node | None:
        match n:
            case ir.Field(name=name) if name.startswith("experiment."):
                return ir.Const(_constant(experiment.get(name)))
            case ir.Meta(scope="experiment", key=key):
                return ir.Const(_constant(meta.get(key) if isinstance(meta, dict) else None))
            case ir.Meta(scope="file", key=key) if key in FILE_KEYS:
                return ir.Const(None)
        return None

    return ir.rewrite(node, leaf)


# ---- regular expressions


def pcre(regex: str) -> str:
    """An IR regex (Python `re` syntax, see `ir.portable_regex`) as MongoDB's PCRE reads
    it the same, and mongomock (Python `re`) too: `\\Z` is PCRE's "end or before a final
    newline", so it becomes `(?!.)` (with the IR's `(?s)`, the end of the text); `\\v` is
    any vertical space in PCRE. `\\d \\w \\s` and their negations are Unicode classes in
    Python and ASCII ones in MongoDB: such patterns stay with Python."""
    out: list[str] = []
    i = 0
    while i < len(regex):
        ch = regex[i]
        if ch != "\\" or i + 1 >= len(regex):
            out.append(ch)
            i += 1
            continue
        escaped = regex[i + 1]
        if escaped == "Z":
            out.append("(?!.)")
        elif escaped == "v":
            out.append("\\x0b")
        elif escaped in "dDwWsS":
            raise ir.Unsupported(
                ir.Const(regex), f"\\{escaped} is a Unicode class in Python, ASCII in MongoDB"
            )
        else:
            out.append(regex[i : i + 2])
        i += 2
    return "".join(out)


def _path_regex(regex: str) -> Query:
    return {PATH: {"$regex": pcre(regex)}}


def _name_regex(body: str) -> str:
    """A regex on the path that holds where the file name matches `body` in full."""
    return f"(?s)(?:^|/){body}\\Z"


# ---- what a document holds


@dataclass(frozen=True, slots=True)
class Stored:
    """A value the document holds under `key`: a catalog field of `category`, or file
    metadata (`category` None: any JSON value). `nonempty`: "" counts as null (md5Sum)."""

    key: str
    category: ir.Category | None
    nonempty: bool = False

    def typed(self, category: ir.Category) -> dict[str, Any] | None:
        """Operators that hold exactly where the value is a `category` value (so not
        null in a comparison of that category); None where it never is."""
        if category not in _BSON_TYPES or self.category not in (None, category):
            return None
        ops: dict[str, Any] = {"$type": _BSON_TYPES[category], **_NOT_ARRAY}
        if self.nonempty:
            ops["$ne"] = ""
        return ops


def stored(node: ir.Node) -> Stored:
    match node:
        case ir.Field(name=name) if name in DOCUMENT_KEYS:
            return Stored(DOCUMENT_KEYS[name], node.category, nonempty=name == "file.md5")
        case ir.Meta(scope="file", key=key):
            if not key or "." in key or key.startswith("$") or "\x00" in key:
                raise ir.Unsupported(node, f"metadata key {key!r} cannot be named in a query")
            return Stored(key, None)
    raise ir.Unsupported(node, f"{_describe(node)} is not a value of the file's document")


def _describe(node: ir.Node) -> str:
    if isinstance(node, ir.Field):
        return node.name
    return type(node).__name__


# ---- the compiler


def _either(parts: list[Query]) -> Query:
    parts = [p for p in parts if p != NOTHING]
    if EVERYTHING in parts:
        return EVERYTHING
    if not parts:
        return NOTHING
    return parts[0] if len(parts) == 1 else {"$or": parts}


def _not(query: Query) -> Query:
    if query == NOTHING:
        return EVERYTHING
    if query == EVERYTHING:
        return NOTHING
    return {"$nor": [query]}


def compile_filter(node: ir.Node) -> Query:
    """The query document selecting the documents where the condition `node` (bound to
    the collection's experiment) is true; `ir.Unsupported` where Mongo cannot say it."""
    match node:
        case ir.Const(value=bool() as flag):
            return EVERYTHING if flag else NOTHING
        case ir.And(items=items):
            parts = [compile_filter(i) for i in items]
            if NOTHING in parts:
                return NOTHING
            parts = [p for p in parts if p != EVERYTHING]
            if not parts:
                return EVERYTHING
            return parts[0] if len(parts) == 1 else {"$and": parts}
        case ir.Or(items=items):
            return _either([compile_filter(i) for i in items])
        case ir.Not(operand=operand):
            return _not(compile_filter(operand))
        case ir.IsNull(operand=operand):
            return _is_null(operand, "any")
        case ir.Cmp():
            return _compare(node)
        case ir.Glob():
            return _glob(node)
        case ir.Regex(operand=operand, regex=regex):
            return _pattern(operand, regex, node)
        case ir.In():
            return _member(node)
    raise ir.Unsupported(node, f"{_describe(node)} is not a condition Mongo can express")


def _is_null(operand: ir.Node, category: ir.Category) -> Query:
    """Where `operand`, read as a `category` value (`any`: as it is), is null."""
    if isinstance(operand, ir.Field) and operand.name in DERIVED:
        return NOTHING if category in ("any", "text") else EVERYTHING
    value = stored(operand)
    if value.category is None and category == "any":
        return {value.key: {"$eq": None, **_NOT_ARRAY}}
    ops = value.typed(value.category or category)
    if ops is None or (value.category is not None and category not in ("any", value.category)):
        return EVERYTHING
    return _not({value.key: ops})


def _compare(node: ir.Cmp) -> Query:
    left, right, op = node.left, node.right, node.op
    if isinstance(left, ir.Const) and not isinstance(right, ir.Const):
        left, right, op = right, left, _FLIP[op]
    if not isinstance(right, ir.Const):
        raise ir.Unsupported(node, "comparing two values of the document")
    category = node.category
    value = pyeval.coerce(right.value, category)
    if category == "any" and value is not None:
        category = ir.category_of(value)
        if category not in _BSON_TYPES:
            raise ir.Unsupported(node, "comparing metadata with a list or an object")
    if category == "list":
        raise ir.Unsupported(node, "comparing lists")
    if value is None:
        if op in ("==", "!="):
            null = _is_null(left, category)
            return null if op == "==" else _not(null)
        return NOTHING
    if op not in ("==", "!=") and category not in ("text", "number"):
        return NOTHING
    if isinstance(left, ir.Field) and left.name in DERIVED:
        return _derived_compare(node, left.name, op, value, category)
    target = stored(left)
    ops = target.typed(category)
    if ops is None:  # the value is never of this category: null in this comparison
        return EVERYTHING if op == "!=" else NOTHING
    if op in ("==", "!="):
        equal = {target.key: {**ops, "$eq": value}}
        return equal if op == "==" else _not(equal)
    return {target.key: {**ops, _ORDER_OPERATORS[op]: value}}


def _derived_equal(name: str, value: str) -> Query:
    """Where `file.name`, `file.dir` or `file.ext` equals `value`, as a test of the path."""
    if name == "file.dir":
        if value == "":
            return _not({PATH: {"$regex": "/"}})
        return _path_regex(f"(?s)^{re.escape(value)}/[^/]*\\Z")
    if "/" in value:
        return NOTHING  # a name holds no `/`
    if name == "file.name":
        return _path_regex(_name_regex(re.escape(value)))
    if "." in value:
        return NOTHING  # the extension follows the name's last dot
    if value == "":  # no dot after the first character, or nothing after the last dot
        return _not(_path_regex(_name_regex("[^/]+\\.[^./]+")))
    return _path_regex(_name_regex(f"[^/]+\\.{re.escape(value)}"))


def _derived_compare(node: ir.Cmp, name: str, op: str, value: Any, category: str) -> Query:
    if category != "text":  # never null, never of another category
        return EVERYTHING if op == "!=" else NOTHING
    if op not in ("==", "!="):
        raise ir.Unsupported(node, f"ordering on {name}, which the document does not store")
    equal = _derived_equal(name, value)
    return equal if op == "==" else _not(equal)


def _pattern(operand: ir.Node, regex: str, node: ir.Node) -> Query:
    """`regex` searched in a text value of the document (never in another kind)."""
    if isinstance(operand, ir.Field) and operand.name in DERIVED:
        raise ir.Unsupported(node, f"a pattern on {operand.name}, which no document key holds")
    target = stored(operand)
    ops = target.typed("text")
    if ops is None:
        return NOTHING
    return {target.key: {**ops, "$regex": pcre(regex)}}


def _glob(node: ir.Glob) -> Query:
    operand = node.operand
    if not isinstance(operand, ir.Field) or operand.name not in DERIVED:
        return _pattern(operand, node.regex, node)
    if operand.name == "file.name" and node.name_only:
        # on the path, `(?:^|/)...\Z` without `/` in between is the name's match
        return _path_regex(node.regex)
    if operand.name == "file.dir":
        # the folder matches in full where the path is that match, `/` and a name
        in_folder = _path_regex(node.regex.removesuffix("\\Z") + "/[^/]*\\Z")
        at_top = _not({PATH: {"$regex": "/"}})
        return _either([in_folder, at_top]) if re.search(node.regex, "") else in_folder
    raise ir.Unsupported(node, f"`like` on {operand.name} with this pattern")


def _member(node: ir.In) -> Query:
    container = node.container
    if not (isinstance(container, ir.Const) and isinstance(container.value, tuple)):
        raise ir.Unsupported(node, "membership in a list of the document")
    if node.category == "list":
        raise ir.Unsupported(node, "membership of a list")
    groups: dict[ir.Category, list[Any]] = {}
    for element in container.value:
        kind = ir.category_of(element)
        if element is None or (node.category != "any" and kind != node.category):
            continue  # never equal to a non-null value of the compared category
        if kind not in _BSON_TYPES:
            raise ir.Unsupported(node, "membership in a list of lists or objects")
        groups.setdefault(kind, []).append(element)
    item = node.item
    if isinstance(item, ir.Field) and item.name in DERIVED:
        return _either([_derived_equal(item.name, v) for v in groups.get("text", [])])
    target = stored(item)
    parts = []
    for kind, values in groups.items():
        ops = target.typed(kind)
        if ops is not None:
            parts.append({target.key: {**ops, "$in": values}})
    return _either(parts)


# ---- pushdown and the rows for the residual


@dataclass
class Pushdown:
    """A condition split for one experiment's collection: `filter` for `find` and the
    `residual` left for Python (None: nothing), with why each part stayed behind."""

    filter: Query
    residual: ir.Node | None
    reasons: list[str] = field(default_factory=list)


def pushdown(node: ir.Node, experiment: Mapping[str, Any]) -> Pushdown:
    """The parts of a conjunction Mongo can express for this experiment's collection,
    and the rest (bound to the experiment) for `pyeval` on `document_row`."""
    pushed: list[Query] = []
    left: list[ir.Node] = []
    reasons: list[str] = []
    for part in ir.conjuncts(bind(node, experiment)):
        try:
            pushed.append(compile_filter(part))
        except ir.Unsupported as exc:
            left.append(part)
            reasons.append(exc.reason)
    pushed = [p for p in pushed if p != EVERYTHING]
    if NOTHING in pushed:
        return Pushdown(NOTHING, None, reasons)
    query = {"$and": pushed} if len(pushed) > 1 else pushed[0] if pushed else EVERYTHING
    residual = ir.conjunction(left) if left else None
    return Pushdown(query, residual, reasons)


def _number(value: Any) -> Any:
    return value if ir.category_of(value) == "number" else None


def document_row(
    doc: Mapping[str, Any],
    experiment: Mapping[str, Any] | None = None,
    replicas: Sequence[pyeval.ReplicaView] = (),
) -> dict[str, Any]:
    """A DM file document as a `pyeval` row, read as the filter reads it (a value of
    the wrong kind is null, an empty md5Sum is none), so that the residual of
    `pushdown` decides on the same values; `replicas` for `copies()` and `path_on()`,
    which the document does not hold."""
    path = doc[PATH]
    name, ext = name_and_ext(path)
    md5 = doc.get("md5Sum")
    row: dict[str, Any] = dict(experiment or {})
    row.update(
        {
            "file.path": path,
            "file.name": name,
            "file.dir": path[: len(path) - len(name) - 1] if "/" in path else "",
            "file.ext": ext,
            "file.size": _number(doc.get("fileSize")),
            "file.md5": md5 if isinstance(md5, str) and md5 else None,
            "file.created": _number(doc.get("fileCreationTime")),
            "file.modified": _number(doc.get("fileModificationTime")),
            "file.meta": {k: v for k, v in doc.items() if k not in FILE_KEYS},
            "replicas": replicas,
        }
    )
    return row


__all__ = [
    "DOCUMENT_KEYS",
    "EVERYTHING",
    "NOTHING",
    "Pushdown",
    "Stored",
    "bind",
    "compile_filter",
    "document_row",
    "pcre",
    "pushdown",
]
