"""The type-checking pass of `policyd check`: expressions and path templates.

Each clause that holds an expression calls `check_expression` with a `Context` that
says what the clause can see (a file's `where` sees file, experiment, station and
now; a grant's `while` only experiment and now; `locations where` only location). The
pass reports every mistake as a Diagnostic with a stable code, the span of the node at
fault, a message that names the types involved and quotes the expression
(`cannot compare size with duration: file.size > 90 days`), and a hint; it never
raises, and a node found wrong is typed `any` so that one mistake is reported once,
not again by every enclosing node.

Codes (listed in docs/rules.md): unknown-attribute, unknown-function, wrong-arguments,
type-mismatch, duration-needs-unit, not-a-condition, bad-pattern, attribute-not-here,
bad-template, and expression-too-deep (an expression nested past Python's recursion limit).
"""

from __future__ import annotations

import difflib
import operator
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import Final

from policyd.diagnostics import Diagnostic, Span
from policyd.grammar import ast
from policyd.rules.signatures import (
    ATTRIBUTES,
    FUNCTIONS,
    META_PREFIXES,
    META_TYPE,
    Function,
    attribute_names,
)
from policyd.rules.types import (
    ANY,
    BOOL,
    DURATION,
    NULL,
    NUMBER,
    PERCENT,
    SIZE,
    TEXT,
    TIME,
    Type,
    TypeProblem,
    accepts,
    arithmetic,
    comparison,
    is_condition,
    like_problem,
    membership,
    negation,
    pattern_operand,
    regex_problem,
    unify_list,
)
from policyd.units import BINARY_SIZE_UNITS, DECIMAL_SIZE_UNITS

# ---- contexts


@dataclass(frozen=True, slots=True)
class Context:
    """What a clause may use, and whether it must be a condition.

    `description` names the clause in messages ("a `where` condition"); `roots` are the
    attribute roots it sees (see signatures.ROOTS); `condition` is True where the
    expression must be bool (where, when, while), False for values (order by, with,
    template placeholders).
    """

    description: str
    roots: frozenset[str]
    condition: bool = True


_FILE_ROOTS: Final = frozenset({"file", "experiment", "station", "now"})

#: `VERB files where E`, `run ... for files where E`, `verify files where E`.
FILE_WHERE: Final = Context("a `where` condition", _FILE_ROOTS)
#: `order by E` and a run rule's `with k = E`: per-file values, not conditions.
FILE_VALUE: Final = Context("a per-file value", _FILE_ROOTS, condition=False)
#: `{ATTRIBUTE}` in a place rule's `at` template.
TEMPLATE: Final = Context("a path template", _FILE_ROOTS, condition=False)
#: `alarm when E`, `clear when E`, a release's `when E`: no file or experiment in sight.
WHEN: Final = Context("a `when` condition", frozenset({"now"}))
#: `grant ... while E`: evaluated per experiment.
GRANT_WHILE: Final = Context("a grant's `while` condition", frozenset({"experiment", "now"}))
#: `on locations where E`.
LOCATIONS_WHERE: Final = Context("`locations where`", frozenset({"location"}))


# ---- expressions as text, for messages

_PRECEDENCE: Final = {
    ast.Or: 1,
    ast.And: 2,
    ast.Not: 3,
    ast.Compare: 4,
    ast.In: 4,
    ast.Like: 4,
    ast.Matches: 4,
    ast.IsNull: 4,
    ast.Binary: 5,
    ast.Unary: 6,
}


def quote(text: str) -> str:
    """A string literal as the DSL writes it (only `\\"` and `\\\\` are escapes)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _decimal_text(value: Decimal) -> str:
    text = format(value.normalize(), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _quantity_text(value: float, units: dict[str, int]) -> str:
    """The shortest exact `NUMBER UNIT` for a canonical value (fewest characters, decimals)."""
    exact = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    sign = "-" if exact < 0 else ""
    exact = abs(exact)
    best: tuple[int, int, str] | None = None
    for unit, factor in units.items():
        shown = _decimal_text(exact / factor)
        if "E" in shown or "e" in shown:
            continue
        decimals = len(shown.split(".")[1]) if "." in shown else 0
        candidate = (len(shown), decimals, f"{sign}{shown} {unit}")
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    return best[2] if best else f"{sign}{exact}"


_SIZE_TEXT_UNITS: Final = {"B": 1, **DECIMAL_SIZE_UNITS, **BINARY_SIZE_UNITS}
_DURATION_TEXT_UNITS: Final = {"s": 1, "min": 60, "h": 3600, "days": 86400}


def _literal_text(node: ast.Literal) -> str:
    value = node.value
    match node.kind:
        case "text":
            return quote(str(value))
        case "number" if isinstance(value, float):
            # positional notation: the DSL has no exponent form (1e-05 would not parse back)
            text = format(Decimal(repr(value)), "f")
            return text if "." in text else text + ".0"
        case "number":
            return repr(value)
        case "bool":
            return "true" if value else "false"
        case "null":
            return "null"
        case "time":
            return str(value)
        case "percent" if isinstance(value, int | float):
            return _decimal_text(Decimal(repr(value)) * 100) + "%"
        case "size" if isinstance(value, int | float):
            return _quantity_text(value, _SIZE_TEXT_UNITS)
        case "duration" if isinstance(value, int | float):
            text = _quantity_text(value, _DURATION_TEXT_UNITS)
            return text[:-1] if text.lstrip("-") == "1 days" else text
        case "list" if isinstance(value, tuple):
            return "[" + ", ".join(expression_text(item) for item in value) + "]"
    return repr(value)


def expression_text(node: ast.Expr, context: int = 0) -> str:
    """The expression as DSL text, with the parentheses its shape needs.

    Used to quote the offending expression in messages; literals come back in their
    canonical form (`90 days`, `10 GB`, `80%`), so `1.5 TiB` stays `1.5 TiB` but
    `2160 h` reads `90 days`.
    """
    precedence = _PRECEDENCE.get(type(node), 7)
    match node:
        case ast.Literal():
            text = _literal_text(node)
        case ast.Attribute(path=path):
            text = ".".join(path)
        case ast.Index(target=target, key=key):
            text = f"{expression_text(target)}[{quote(key)}]"
        case ast.Call(name=name, args=args, kwargs=kwargs):
            parts = [expression_text(a) for a in args]
            parts += [f"{k.name} = {expression_text(k.value)}" for k in kwargs]
            text = f"{name}({', '.join(parts)})"
        case ast.Unary(operand=operand):
            text = f"-{expression_text(operand, 6)}"
        case ast.Binary(op=op, left=left, right=right):
            text = f"{expression_text(left, 5)} {op} {expression_text(right, 6)}"
        case ast.Compare(op=op, left=left, right=right):
            text = f"{expression_text(left, 5)} {op} {expression_text(right, 5)}"
        case ast.In(item=item, container=container):
            text = f"{expression_text(item, 5)} in {expression_text(container, 5)}"
        case ast.Like(operand=operand, pattern=pattern):
            text = f"{expression_text(operand, 5)} like {quote(pattern)}"
        case ast.Matches(operand=operand, pattern=pattern):
            text = f"{expression_text(operand, 5)} matches {quote(pattern)}"
        case ast.IsNull(operand=operand, negated=negated):
            text = f"{expression_text(operand, 5)} is {'not ' if negated else ''}null"
        case ast.And(left=left, right=right):
            text = f"{expression_text(left, 2)} and {expression_text(right, 3)}"
        case ast.Or(left=left, right=right):
            text = f"{expression_text(left, 1)} or {expression_text(right, 2)}"
        case ast.Not(operand=operand):
            text = f"not {expression_text(operand, 3)}"
        case _:
            return repr(node)
    return f"({text})" if precedence < context else text


# ---- the checker


def _suggest(word: str, candidates: list[str]) -> str | None:
    found = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return found[0] if found else None


def _roots_text(roots: frozenset[str]) -> str:
    order = ["file", "experiment", "station", "location", "now"]
    names = [
        f"{r}.*" if r in ("file", "experiment", "location") else r for r in order if r in roots
    ]
    if len(names) <= 1:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _a(t: Type) -> str:
    if t.kind in ("text", "any", "null") or t.kind == "list":
        return str(t)
    return f"a {t}"


_CONDITION_EXAMPLES: Final = {
    "size": "{e} > 10 GB",
    "duration": "{e} > 90 days",
    "time": "{e} < now - 90 days",
    "percent": "{e} > 80%",
    "number": "{e} > 0",
    "text": '{e} == "x"',
    "list": '"x" in {e}',
}


class _Checker:
    def __init__(self, context: Context) -> None:
        self.context = context
        self.diagnostics: list[Diagnostic] = []

    def error(self, code: str, message: str, span: Span, hint: str | None = None) -> None:
        self.diagnostics.append(Diagnostic(code, message, span, "error", hint))

    def problem(self, problem: TypeProblem, node: ast.Expr) -> Type:
        self.error(
            problem.code, f"{problem.message}: {expression_text(node)}", node.span, problem.hint
        )
        return ANY

    # -- dispatch

    def check(self, node: ast.Expr) -> Type:
        method: Callable[[ast.Expr], Type] = getattr(self, "_" + type(node).__name__.lower())
        return method(node)

    def condition(self, node: ast.Expr, what: str) -> None:
        """Check `node` and report it when it is not a condition; `what` names its place."""
        t = self.check(node)
        if is_condition(t):
            return
        text = expression_text(node)
        if t.kind == "null":
            hint = "to test for a missing value write `E is null`"
        else:
            example = _CONDITION_EXAMPLES.get(t.kind)
            shown = expression_text(node, 5)
            hint = f"compare it, e.g. {example.format(e=shown)}" if example else None
        self.error(
            "not-a-condition", f"{what} must be true or false, got {t}: {text}", node.span, hint
        )

    # -- leaves

    def _literal(self, node: ast.Literal) -> Type:
        match node.kind:
            case "list":
                items = node.value if isinstance(node.value, tuple) else ()
                types = [self.check(item) for item in items]
                result = unify_list(types)
                if isinstance(result, TypeProblem):
                    return self.problem(result, node)
                return result
            case "text":
                return TEXT
            case "number":
                return NUMBER
            case "size":
                return SIZE
            case "duration":
                return DURATION
            case "percent":
                return PERCENT
            case "time":
                return TIME
            case "bool":
                return BOOL
            case _:
                return NULL

    def _not_here(self, name: str, root: str, span: Span) -> Type:
        if root == "location":
            self.error(
                "attribute-not-here",
                f"{name} is only known inside `locations where`",
                span,
                "use location.* in `on locations where E`",
            )
        else:
            allowed = _roots_text(self.context.roots)
            self.error(
                "attribute-not-here",
                f"{name} is not known in {self.context.description}",
                span,
                f"{self.context.description} may use {allowed}" if allowed else None,
            )
        return ANY

    def _unknown_attribute(self, name: str, path: tuple[str, ...], span: Span) -> Type:
        roots = self.context.roots
        local = [n for n in attribute_names(roots) if not n.endswith(".KEY")]
        everywhere = [n for n in attribute_names() if not n.endswith(".KEY")]
        if len(path) >= 3 and path[0] in ("file", "experiment"):
            meta = f"{path[0]}.meta.{'.'.join(path[2:])}"
            local.append(meta)
            everywhere.append(meta)
        suggestion = _suggest(name, local) or _suggest(name, everywhere)
        if suggestion:
            hint = f"did you mean {suggestion}?"
        else:
            hint = "known attributes here: " + ", ".join(attribute_names(roots))
        self.error("unknown-attribute", f"unknown attribute {name}", span, hint)
        return ANY

    def _meta(self, path: tuple[str, ...], span: Span, keyed: bool) -> Type:
        """`file.meta.KEY` / `experiment.meta["KEY"]`: one key, any type."""
        prefix = ".".join(path[:2])
        name = ".".join(path)
        if keyed and len(path) != 2:
            self.error(
                "unknown-attribute",
                f"only file.meta and experiment.meta take a key in brackets, not {name}",
                span,
            )
            return ANY
        if not keyed and len(path) == 2:
            self.error(
                "unknown-attribute",
                f"{name} needs a key",
                span,
                f'write {prefix}.KEY, or {prefix}["KEY"] for a key that is not an identifier',
            )
            return ANY
        if not keyed and len(path) > 3:
            key = ".".join(path[2:])
            self.error(
                "unknown-attribute",
                f"unknown attribute {name}: a metadata key is one name",
                span,
                f"for a key with dots write {prefix}[{quote(key)}]",
            )
            return ANY
        if path[0] not in self.context.roots:
            return self._not_here(name, path[0], span)
        return META_TYPE

    def _attribute(self, node: ast.Attribute) -> Type:
        path = node.path
        name = ".".join(path)
        if ".".join(path[:2]) in META_PREFIXES:
            return self._meta(path, node.span, keyed=False)
        info = ATTRIBUTES.get(name)
        if info is None:
            return self._unknown_attribute(name, path, node.span)
        if info.root not in self.context.roots:
            return self._not_here(name, info.root, node.span)
        return info.type

    def _index(self, node: ast.Index) -> Type:
        path = node.target.path
        if ".".join(path) not in META_PREFIXES:
            self.error(
                "unknown-attribute",
                "only file.meta and experiment.meta take a key in brackets: "
                + expression_text(node),
                node.span,
            )
            return ANY
        return self._meta(path, node.span, keyed=True)

    # -- calls

    def _call(self, node: ast.Call) -> Type:
        function = FUNCTIONS.get(node.name)
        if function is None:
            for argument in node.args:
                self.check(argument)
            for keyword in node.kwargs:
                self.check(keyword.value)
            suggestion = _suggest(node.name, list(FUNCTIONS))
            hint = (
                f"did you mean {suggestion}()?"
                if suggestion
                else "functions: " + ", ".join(f"{name}()" for name in FUNCTIONS)
            )
            self.error("unknown-function", f"unknown function {node.name}()", node.span, hint)
            return ANY
        missing = function.needs - self.context.roots
        if missing:
            self.error(
                "attribute-not-here",
                f"{function.name}() looks at a file and is not known in {self.context.description}",
                node.span,
                f"{self.context.description} may use {_roots_text(self.context.roots)}",
            )
        ok = self._arguments(function, node)
        return function.result if ok and not missing else ANY

    def _arguments(self, function: Function, node: ast.Call) -> bool:
        ok = True
        usage_hint = f"call it as {function.usage()}"
        expected = len(function.positional)
        if len(node.args) != expected:
            count = {0: "no arguments", 1: "1 argument"}.get(expected, f"{expected} arguments")
            self.error(
                "wrong-arguments",
                f"{function.name}() takes {count}, got {len(node.args)}: {expression_text(node)}",
                node.span,
                usage_hint,
            )
            for argument in node.args:
                self.check(argument)
            for keyword in node.kwargs:
                self.check(keyword.value)
            return False
        pairs = [(p, a, a.span) for p, a in zip(function.positional, node.args, strict=False)]
        keywords = {p.name: p for p in function.keywords}
        for keyword in node.kwargs:
            parameter = keywords.get(keyword.name)
            if parameter is None:
                self.check(keyword.value)
                suggestion = _suggest(keyword.name, list(keywords))
                hint = f"did you mean {suggestion}?" if suggestion else usage_hint
                what = (
                    f"{function.name}() has no argument {keyword.name}"
                    if keywords
                    else f"{function.name}() takes no keyword arguments"
                )
                self.error(
                    "wrong-arguments", f"{what}: {expression_text(node)}", keyword.span, hint
                )
                ok = False
                continue
            pairs.append((parameter, keyword.value, keyword.span))
        for parameter, argument, span in pairs:
            t = self.check(argument)
            if parameter.literal and not (
                isinstance(argument, ast.Literal) and argument.kind == "text"
            ):
                self.error(
                    "wrong-arguments",
                    f"{function.name}() takes {parameter.description} as a quoted string: "
                    f"{expression_text(node)}",
                    span,
                    usage_hint,
                )
                ok = False
            elif not accepts(parameter.type, t):
                self.error(
                    "type-mismatch",
                    f"{function.name}() needs {_a(parameter.type)}, got {t}: "
                    f"{expression_text(node)}",
                    span,
                    usage_hint,
                )
                ok = False
        return ok

    # -- operators

    def _unary(self, node: ast.Unary) -> Type:
        result = negation(self.check(node.operand))
        return self.problem(result, node) if isinstance(result, TypeProblem) else result

    def _binary(self, node: ast.Binary) -> Type:
        left, right = self.check(node.left), self.check(node.right)
        result = arithmetic(node.op, left, right, _number_text(node.left, node.right))
        return self.problem(result, node) if isinstance(result, TypeProblem) else result

    def _compare(self, node: ast.Compare) -> Type:
        left, right = self.check(node.left), self.check(node.right)
        problem = comparison(node.op, left, right, _number_text(node.left, node.right))
        if problem:
            self.problem(problem, node)
        return BOOL

    def _in(self, node: ast.In) -> Type:
        item, container = self.check(node.item), self.check(node.container)
        problem = membership(item, container)
        if problem:
            self.problem(problem, node)
        return BOOL

    def _pattern(
        self, node: ast.Like | ast.Matches, operator_name: str, reason: str | None, hint: str
    ) -> Type:
        problem = pattern_operand(operator_name, self.check(node.operand))
        if problem:
            self.problem(problem, node)
        if reason:
            self.error("bad-pattern", f"{reason}: {expression_text(node)}", node.span, hint)
        return BOOL

    def _like(self, node: ast.Like) -> Type:
        hint = "like takes * ** ? and \\ escapes; write \\\\ for a backslash"
        return self._pattern(node, "like", like_problem(node.pattern), hint)

    def _matches(self, node: ast.Matches) -> Type:
        hint = (
            "matches takes the regular expressions common to Python and PostgreSQL: "
            ". [...] [^...] * + ? {m,n} | (...) (?:...) ^ $ \\d \\w \\s"
        )
        return self._pattern(node, "matches", regex_problem(node.pattern), hint)

    def _isnull(self, node: ast.IsNull) -> Type:
        self.check(node.operand)
        return BOOL

    def _and(self, node: ast.And) -> Type:
        self.condition(node.left, "each side of `and`")
        self.condition(node.right, "each side of `and`")
        return BOOL

    def _or(self, node: ast.Or) -> Type:
        self.condition(node.left, "each side of `or`")
        self.condition(node.right, "each side of `or`")
        return BOOL

    def _not(self, node: ast.Not) -> Type:
        self.condition(node.operand, "the operand of `not`")
        return BOOL


def _number_text(*nodes: ast.Expr) -> str | None:
    """The written bare number among two operands, for a hint that adds its unit."""
    for node in nodes:
        if isinstance(node, ast.Literal) and node.kind == "number":
            return expression_text(node)
    return None


def check_expression(expr: ast.Expr, context: Context) -> tuple[Type, list[Diagnostic]]:
    """The type of `expr` in `context`, and every type error in it (in source order).

    When the context wants a condition and the expression is not bool, the
    not-a-condition error is added. The type of an expression with errors may be `any`.
    """
    checker = _Checker(context)
    try:
        if context.condition:
            checker.condition(expr, context.description[0].upper() + context.description[1:])
            result = BOOL
        else:
            result = checker.check(expr)
    except RecursionError:
        checker.error("expression-too-deep", "this expression is nested too deeply", expr.span)
        result = ANY
    diagnostics = sorted(checker.diagnostics, key=Diagnostic.sort_key)
    if diagnostics and context.condition:
        result = BOOL
    return result, diagnostics


# ---- constant folding


class _Unknown:
    """Not a constant."""


_UNKNOWN: Final = _Unknown()
_NUMERIC: Final = frozenset({"number", "size", "duration", "percent"})
_ORDER: Final[dict[str, Callable[[object, object], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

_Constant = tuple[str, object] | _Unknown


def _fold(node: ast.Expr) -> _Constant:
    """A (kind, value) pair for a constant sub-expression, or _UNKNOWN.

    Only what is easy and certain: literals, arithmetic on them within a kind, and the
    null rule. Times are left alone (a time without an offset needs the site timezone).
    """
    match node:
        case ast.Literal(kind="list"):
            items = [_fold(item) for item in node.value] if isinstance(node.value, tuple) else []
            if any(isinstance(item, _Unknown) for item in items):
                return _UNKNOWN
            return ("list", tuple(items))
        case ast.Literal(kind="time"):
            return _UNKNOWN
        case ast.Literal(kind=kind, value=value):
            return (kind, value)
        case ast.Unary(operand=operand):
            folded = _fold(operand)
            if isinstance(folded, tuple) and folded[0] == "null":
                return folded
            if isinstance(folded, tuple) and folded[0] in _NUMERIC:
                value = folded[1]
                if isinstance(value, int | float):
                    return (folded[0], -value)
            return _UNKNOWN
        case ast.Binary(op=op, left=left, right=right):
            a, b = _fold(left), _fold(right)
            if (isinstance(a, tuple) and a[0] == "null") or (
                isinstance(b, tuple) and b[0] == "null"
            ):
                return ("null", None)
            if isinstance(a, tuple) and isinstance(b, tuple) and a[0] == b[0] and a[0] in _NUMERIC:
                x, y = a[1], b[1]
                if isinstance(x, int | float) and isinstance(y, int | float):
                    return (a[0], x + y if op == "+" else x - y)
            return _UNKNOWN
    value = constant_value(node)
    return ("bool", value) if value is not None else _UNKNOWN


def _comparable(a: tuple[str, object], b: tuple[str, object]) -> bool:
    return a[0] == b[0] or {a[0], b[0]} in ({"number", "size"}, {"number", "percent"})


def constant_value(expr: ast.Expr) -> bool | None:
    """True or False when a condition has the same value for every file, else None.

    For the "rule can never match" finding: `where false`, `file.size > 10 GB and
    false`, `x in []`, `file.size > null` (ordering with null is false), `not true`.
    Folds by the null rule of section 4; an unknown operand stops folding except where
    `and`/`or` short-circuit. Never raises.
    """
    try:
        return _constant(expr)
    except (RecursionError, TypeError, ValueError):
        return None


def _constant(expr: ast.Expr) -> bool | None:
    match expr:
        case ast.Literal(kind="bool", value=value):
            return bool(value)
        case ast.Not(operand=operand):
            inner = _constant(operand)
            return None if inner is None else not inner
        case ast.And(left=left, right=right):
            a, b = _constant(left), _constant(right)
            if a is False or b is False:
                return False
            return True if a is True and b is True else None
        case ast.Or(left=left, right=right):
            a, b = _constant(left), _constant(right)
            if a is True or b is True:
                return True
            return False if a is False and b is False else None
        case ast.IsNull(operand=operand, negated=negated):
            folded = _fold(operand)
            if isinstance(folded, _Unknown):
                return None
            return (folded[0] != "null") if negated else (folded[0] == "null")
        case ast.Like(operand=operand) | ast.Matches(operand=operand):
            folded = _fold(operand)
            return False if isinstance(folded, tuple) and folded[0] == "null" else None
        case ast.In(item=item, container=container):
            a, b = _fold(item), _fold(container)
            if isinstance(a, tuple) and a[0] == "null":
                return False
            if isinstance(b, tuple) and b[0] == "null":
                return False
            if isinstance(b, tuple) and b[0] == "list" and isinstance(b[1], tuple):
                if not b[1]:
                    return False
                if isinstance(a, tuple):
                    return any(
                        isinstance(e, tuple) and _comparable(a, e) and e[1] == a[1] for e in b[1]
                    )
            return None
        case ast.Compare(op=op, left=left, right=right):
            return _compare_constant(op, _fold(left), _fold(right))
    return None


def _compare_constant(op: str, a: _Constant, b: _Constant) -> bool | None:
    a_null = isinstance(a, tuple) and a[0] == "null"
    b_null = isinstance(b, tuple) and b[0] == "null"
    if op in _ORDER and (a_null or b_null):
        return False
    if not isinstance(a, tuple) or not isinstance(b, tuple):
        return None
    if op in ("==", "!="):
        if a_null or b_null:
            equal = a_null and b_null
        elif _comparable(a, b) and a[0] != "list":
            equal = a[1] == b[1]
        else:
            return None
        return equal if op == "==" else not equal
    if not _comparable(a, b) or a[0] in ("bool", "list"):
        return None
    x, y = a[1], b[1]
    if (isinstance(x, str) and isinstance(y, str)) or (
        isinstance(x, int | float) and isinstance(y, int | float)
    ):
        return _ORDER[op](x, y)
    return None


# ---- templates

#: strftime directives that Python renders the same on every platform policyd runs on.
STRFTIME_DIRECTIVES: Final = frozenset("aAbBcdfGHIjmMpSuUVwWxXyYzZ%")
_RENDERABLE: Final = frozenset({"text", "number", "time", "any"})


def _sub_span(span: Span, offset: int, length: int, text_offset: int) -> Span:
    """The span of characters [offset, offset+length) of a one-line template."""
    if span.line <= 0 or span.col <= 0 or span.end_line not in (0, span.line):
        return span
    col = span.col + text_offset + offset
    return Span(span.file, span.line, col, span.line, col + length)


def scan_placeholder(text: str, start: int) -> int:
    """The index of the `}` that closes the placeholder opened at `start`, or -1."""
    i = start + 1
    in_string = False
    while i < len(text):
        ch = text[i]
        if in_string:
            if ch == "\\":
                i += 1
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "}":
            return i
        i += 1
    return -1


def split_format(inner: str) -> tuple[str, str | None]:
    """`experiment.start:%Y-%m` -> (`experiment.start`, `%Y-%m`); quotes protect a `:`."""
    in_string = False
    for i, ch in enumerate(inner):
        if ch == '"':
            in_string = not in_string
        elif ch == ":" and not in_string:
            return inner[:i], inner[i + 1 :]
    return inner, None


def _format_skeleton(fmt: str) -> tuple[str, str | None]:
    """The format with each directive replaced by `X`, and the first bad directive."""
    out = []
    i = 0
    while i < len(fmt):
        if fmt[i] == "%":
            if i + 1 >= len(fmt):
                return "".join(out), "%"
            directive = fmt[i + 1]
            if directive not in STRFTIME_DIRECTIVES:
                return "".join(out), "%" + directive
            out.append("%" if directive == "%" else "X")
            i += 2
            continue
        out.append(fmt[i])
        i += 1
    return "".join(out), None


def check_template(
    text: str, span: Span, context: Context = TEMPLATE, *, text_offset: int = 1
) -> list[Diagnostic]:
    """Every problem of a path template such as `{station}/{experiment.start:%Y}/{file.path}`.

    Placeholders must be known attributes of `context` with a value a path can hold
    (text, number, time or untyped metadata; not a list, bool or quantity); a format is
    a strftime format and only for times; `{{` and `}}` are literal braces. The text
    around the placeholders must not make the path absolute, hold a `..` or empty
    segment, or a NUL. `span` is where the template is written; `text_offset` is the
    number of columns before its first character (1 for the DSL's opening quote), so a
    one-line template's diagnostics point at the placeholder.
    """
    diagnostics: list[Diagnostic] = []

    def error(code: str, message: str, where: Span, hint: str | None = None) -> None:
        diagnostics.append(Diagnostic(code, message, where, "error", hint))

    shown = quote(text)
    skeleton: list[str] = []
    broken = False  # an unmatched brace: the path's shape is unknown, so not judged
    i = 0
    while i < len(text):
        ch = text[i]
        if text.startswith("{{", i) or text.startswith("}}", i):
            skeleton.append(ch)
            i += 2
            continue
        if ch == "}":
            broken = True
            error(
                "bad-template",
                f"a }} without a {{ in template {shown}",
                _sub_span(span, i, 1, text_offset),
                "write }} for a literal brace",
            )
            i += 1
            continue
        if ch != "{":
            skeleton.append(ch)
            i += 1
            continue
        end = scan_placeholder(text, i)
        if end < 0:
            broken = True
            error(
                "bad-template",
                f"a {{ that is never closed in template {shown}",
                _sub_span(span, i, 1, text_offset),
                "close it with }, or write {{ for a literal brace",
            )
            break
        inner = text[i + 1 : end]
        where = _sub_span(span, i, end + 1 - i, text_offset)
        skeleton.append(_check_placeholder(inner, i + 1, where, span, text_offset, context, error))
        i = end + 1
    rendered = "".join(skeleton)
    # after a broken placeholder the rendered shape is not known: check only the rest
    if not broken:
        if not text:
            error("bad-template", "a template cannot be empty", span)
        elif rendered.startswith("/"):
            error(
                "bad-template",
                f"a template must render a relative path, not one starting with /: {shown}",
                span,
                "remove the leading /: the path is inside the location's root",
            )
        else:
            segments = rendered.split("/")
            if ".." in segments:
                error(
                    "bad-template",
                    f"a template cannot hold a .. segment: {shown}",
                    span,
                    "paths never leave the location's root",
                )
            if "" in segments:
                error(
                    "bad-template",
                    f"a template cannot hold an empty segment (// or a trailing /): {shown}",
                    span,
                )
    if "\x00" in rendered:
        error("bad-template", f"a template cannot hold a NUL character: {shown}", span)
    return sorted(diagnostics, key=Diagnostic.sort_key)


def _check_placeholder(
    inner: str,
    offset: int,
    where: Span,
    span: Span,
    text_offset: int,
    context: Context,
    error: Callable[[str, str, Span, str | None], None],
) -> str:
    """Check one `{...}`; return what it contributes to the skeleton path."""
    from policyd.grammar.dsl import parse_expression

    name_text, fmt = split_format(inner)
    if name_text != name_text.strip():
        error(
            "bad-template",
            f"a placeholder cannot hold spaces around its attribute: {{{inner}}}",
            where,
            f"write {{{name_text.strip()}{'' if fmt is None else ':' + fmt}}}",
        )
        return "X"
    line_offset = max(span.line - 1, 0)
    col_offset = max(span.col - 1, 0) + text_offset + offset
    if span.end_line not in (0, span.line):
        line_offset, col_offset = 0, 0
    node, problems = parse_expression(name_text, span.file, line_offset, col_offset)
    if node is None or problems or not isinstance(node, ast.Attribute | ast.Index):
        error(
            "bad-template",
            f"a placeholder holds one attribute, not {{{inner}}}",
            where,
            "write {ATTRIBUTE} or {ATTRIBUTE:FORMAT}, e.g. {experiment.start:%Y-%m}",
        )
        return "X"
    if span.end_line not in (0, span.line):
        node = _with_span(node, where)
    t, found = check_expression(node, context)
    for diagnostic in found:
        error(diagnostic.code, diagnostic.message, diagnostic.span or where, diagnostic.hint)
    name = expression_text(node)
    if t.kind not in _RENDERABLE and not found:
        error(
            "type-mismatch",
            f"cannot put {t} in a path: {{{inner}}}",
            where,
            "use text, number or time attributes",
        )
    if fmt is None:
        return "X"
    if t.kind not in ("time", "any"):
        if not found:
            error(
                "type-mismatch",
                f"a format applies to times only, and {name} is {t}: {{{inner}}}",
                where,
                f"write {{{name}}}",
            )
        return "X"
    if not fmt:
        error("bad-template", f"an empty format in {{{inner}}}", where, f"write {{{name}}}")
        return "X"
    skeleton, bad = _format_skeleton(fmt)
    if bad is not None:
        error(
            "bad-template",
            f"{bad} is not a strftime directive policyd renders: {{{inner}}}",
            where,
            "use %Y %m %d %H %M %S %j %b %a (and %% for a %)",
        )
        return "X"
    return skeleton


def _with_span(node: ast.Attribute | ast.Index, span: Span) -> ast.Attribute | ast.Index:
    if isinstance(node, ast.Index):
        return ast.Index(ast.Attribute(node.target.path, span), node.key, span)
    return ast.Attribute(node.path, span)


def statement_expressions(statement: ast.Statement) -> Iterator[tuple[ast.Expr, Context]]:
    """Every expression of a statement with the context it is typed in."""
    match statement:
        case ast.Place() | ast.Archive() | ast.Expire() | ast.Protect():
            yield statement.where, FILE_WHERE
        case ast.Replicate():
            yield statement.where, FILE_WHERE
            if isinstance(statement.on, ast.LocationQuery):
                yield statement.on.where, LOCATIONS_WHERE
        case ast.Release():
            yield statement.where, FILE_WHERE
            if statement.when is not None:
                yield statement.when, WHEN
            if statement.order_by is not None:
                yield statement.order_by.expr, FILE_VALUE
        case ast.Alarm():
            yield statement.when, WHEN
            if statement.clear_when is not None:
                yield statement.clear_when, WHEN
        case ast.Grant():
            if statement.while_ is not None:
                yield statement.while_, GRANT_WHILE
        case ast.Run():
            if statement.where is not None:
                yield statement.where, FILE_WHERE
            for argument in statement.with_:
                yield argument.value, FILE_VALUE
        case ast.Verify():
            if statement.where is not None:
                yield statement.where, FILE_WHERE
