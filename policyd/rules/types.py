"""The value types of the rules language and the type rules of spec/rules.md section 4.

The rules are kept here as small pure functions over types, apart from the tree walk
in `typecheck`, so that the three evaluation backends (SQL, Mongo, Python) can ask the
same questions (what is `time - time`? may a bare number meet a percent?) and get the
answers the checker gave, instead of re-deriving them. A rule that refuses something
returns a `TypeProblem` (a code and the start of a message) rather than raising: the
checker adds the expression's text and its span and carries on, so that one run reports
every mistake.

`null` is a type of its own, the type of the `null` literal: it meets every type (a
missing value may stand anywhere a value may), and `constant_value` in `typecheck`
folds what that means. `any` is the type of `file.meta.KEY` and `experiment.meta.KEY`,
whose values the catalog does not type: it also meets every type, and the backends
decide at evaluation time.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal

TypeKind = Literal[
    "text", "number", "size", "duration", "time", "percent", "bool", "list", "null", "any"
]


@dataclass(frozen=True, slots=True)
class Type:
    """A value type; `element` is set for lists only (`list of text`)."""

    kind: TypeKind
    element: Type | None = None

    def __str__(self) -> str:
        if self.kind == "list":
            return f"list of {self.element or ANY}"
        return self.kind


TEXT: Final = Type("text")
NUMBER: Final = Type("number")
SIZE: Final = Type("size")
DURATION: Final = Type("duration")
TIME: Final = Type("time")
PERCENT: Final = Type("percent")
BOOL: Final = Type("bool")
NULL: Final = Type("null")
ANY: Final = Type("any")


def list_of(element: Type) -> Type:
    return Type("list", element)


#: Types whose values have an order (`<`, `>`, `order by`): not bool, not lists.
ORDERED_KINDS: Final = frozenset({"text", "number", "size", "duration", "time", "percent"})


@dataclass(frozen=True, slots=True)
class TypeProblem:
    """Why a rule refuses an operation: the checker adds `: EXPRESSION` to `message`."""

    code: str
    message: str
    hint: str | None = None


def is_open(t: Type) -> bool:
    """null and any meet every type: the check is left to evaluation time."""
    return t.kind in ("null", "any")


def is_condition(t: Type) -> bool:
    """A where/when/while, or an operand of and/or/not, must be bool (or untyped `any`).

    The `null` literal is refused: `where null` or `x and null` is never what was meant,
    and `E is null` says it.
    """
    return t.kind in ("bool", "any")


def is_orderable(t: Type) -> bool:
    """Whether `order by` (and `< <= > >=`) may use values of this type."""
    return t.kind in ORDERED_KINDS or is_open(t)


def _bare_number_hint(unit_kind: str, number_text: str | None) -> str:
    number = number_text or "90"
    example = {"size": f"{number} GB", "duration": f"{number} days", "percent": f"{number}%"}
    return f"write the number with its unit, e.g. {example[unit_kind]}"


def comparison(
    op: str, left: Type, right: Type, number_text: str | None = None
) -> TypeProblem | None:
    """Whether `left OP right` is allowed; None when it is.

    Same types compare, and null or any compare with everything. Across types only a
    bare number meets a size (as bytes) or a percent (as a fraction: `0.8` is `80%`). A
    bare number never meets a duration, because `90` is as likely days as seconds.
    Bool and lists have no order, and lists have no equality either (`in` is the test a
    list takes). `number_text` is the written number, for the hint.
    """
    ordering = op not in ("==", "!=")
    if is_open(left) or is_open(right):
        pair_kinds = {left.kind, right.kind}
        if ordering and pair_kinds & {"bool", "list"}:
            shown = left if left.kind in ("bool", "list") else right
            return TypeProblem("type-mismatch", f"{shown} values have no order for {op}")
        return None
    kinds = {left.kind, right.kind}
    if kinds == {"duration", "number"}:
        return TypeProblem(
            "duration-needs-unit",
            f"cannot compare {_bare(left)} with {_bare(right)}",
            _duration_hint(number_text),
        )
    if left.kind == "list" or right.kind == "list":
        hint = "use `in` to test membership in a list"
        if left == right:
            return TypeProblem("type-mismatch", f"cannot compare {left} values with {op}", hint)
        return TypeProblem("type-mismatch", f"cannot compare {left} with {right}", hint)
    if left == right:
        if ordering and left.kind == "bool":
            return TypeProblem("type-mismatch", f"bool values have no order for {op}")
        return None
    if kinds in ({"number", "size"}, {"number", "percent"}):
        return None
    hint = None
    if kinds == {"time", "text"}:
        hint = "write a time without quotes: 2026-01-31 or 2026-01-31T12:00:00Z"
    elif kinds == {"time", "duration"}:
        hint = "a point in time is `now - 90 days`; a span of time is `age(T)`"
    elif kinds == {"time", "number"}:
        hint = "write a time as 2026-01-31 or `now - 90 days`"
    return TypeProblem("type-mismatch", f"cannot compare {left} with {right}", hint)


def arithmetic(
    op: str, left: Type, right: Type, number_text: str | None = None
) -> Type | TypeProblem:
    """The type of `left + right` or `left - right`, or why it is refused.

    time - time is a duration; time +/- duration (and duration + time) is a time; sizes,
    durations, percentages and numbers add and subtract within their own kind. A null
    operand makes the result null (section 4's null rule); an `any` operand makes it
    `any`, decided at evaluation time.
    """
    if left.kind == "null" or right.kind == "null":
        return NULL
    if is_open(left) or is_open(right):
        other = right if is_open(left) else left
        if other.kind in ("text", "bool", "list"):
            return _arithmetic_problem(op, left, right, number_text)
        return ANY
    if left.kind == "time" and right.kind == "time" and op == "-":
        return DURATION
    if left.kind == "time" and right.kind == "duration":
        return TIME
    if left.kind == "duration" and right.kind == "time" and op == "+":
        return TIME
    if left == right and left.kind in ("number", "size", "duration", "percent"):
        return left
    return _arithmetic_problem(op, left, right, number_text)


def _bare(t: Type) -> str:
    """How a type is named next to a quantity: a number there is `a bare number`."""
    return "a bare number" if t.kind == "number" else str(t)


def _duration_hint(number_text: str | None) -> str:
    number = number_text or "90"
    unit = "day" if number == "1" else "days"
    return f"a duration needs its unit: write {number} {unit} (or s, min, h, w, y)"


def _arithmetic_problem(
    op: str, left: Type, right: Type, number_text: str | None = None
) -> TypeProblem:
    kinds = {left.kind, right.kind}
    if kinds in ({"number", "duration"}, {"number", "time"}):
        code = "duration-needs-unit"
        hint: str | None = _duration_hint(number_text)
        lname, rname = _bare(left), _bare(right)
    else:
        code = "type-mismatch"
        hint = None
        lname, rname = str(left), str(right)
        if kinds in ({"number", "size"}, {"number", "percent"}):
            hint = _bare_number_hint(next(iter(kinds - {"number"})), number_text)
            lname, rname = _bare(left), _bare(right)
        elif left.kind == "duration" and right.kind == "time":
            hint = "subtract the duration from the time: `now - 90 days`"
    if op == "+":
        return TypeProblem(code, f"cannot add {lname} and {rname}", hint)
    return TypeProblem(code, f"cannot subtract {rname} from {lname}", hint)


def negation(operand: Type) -> Type | TypeProblem:
    """Unary minus: on numbers and on quantities with a unit (a negative duration)."""
    if operand.kind in ("number", "size", "duration", "percent", "null", "any"):
        return operand
    return TypeProblem("type-mismatch", f"cannot negate {operand}")


def pattern_operand(operator: str, operand: Type) -> TypeProblem | None:
    """`like` and `matches` work on text (a null or untyped value is decided later)."""
    if operand.kind in ("text", "null", "any"):
        return None
    return TypeProblem("type-mismatch", f"{operator} needs text, got {operand}")


def membership(item: Type, container: Type) -> TypeProblem | None:
    """`ITEM in CONTAINER`: the container is a list and the item meets its elements."""
    if container.kind in ("null", "any"):
        return None
    if container.kind != "list":
        hint = 'for text inside text use like: file.name like "*x*"' if container == TEXT else None
        return TypeProblem("type-mismatch", f"in needs a list on its right, got {container}", hint)
    element = container.element or ANY
    if comparison("==", item, element) is None:
        return None
    return TypeProblem("type-mismatch", f"cannot look for {item} in a {container}")


def unify_list(elements: Iterable[Type]) -> Type | TypeProblem:
    """The type of a list literal: one element type (null elements aside), or a problem.

    An empty list (or a list of nulls) is a `list of any`, so `x in []` type-checks
    (and folds to false).
    """
    found: Type | None = None
    for element in elements:
        if element.kind == "null":
            continue
        if element.kind == "list":
            return TypeProblem("type-mismatch", "a list cannot hold lists")
        if found is None or found.kind == "any":
            found = element
        elif element.kind != "any" and element != found:
            return TypeProblem(
                "type-mismatch", f"a list holds values of one type, not {found} and {element}"
            )
    return list_of(found or ANY)


def accepts(parameter: Type, argument: Type) -> bool:
    """Whether a function parameter of type `parameter` takes an argument of type `argument`."""
    return is_open(argument) or argument == parameter


# ---- patterns

#: Escapes that mean the same in Python's `re` and PostgreSQL's regular expressions.
#: Left out on purpose: \b \B (a word boundary in Python, backspace in PostgreSQL),
#: \x \u \U \0 and octal (different lengths), \N and \z (Python only), \1..\9 (backrefs).
_PORTABLE_LETTER_ESCAPES: Final = frozenset("dDwWsStnrfvAZ")
_QUANTIFIER: Final = re.compile(r"\{([0-9]+)(,([0-9]*))?\}")


def regex_problem(pattern: str) -> str | None:
    """Why a `matches` pattern is outside the subset common to Python `re` and PostgreSQL.

    The pattern must compile in Python, and must not use look-around, backreferences,
    named groups, inline flags, comments, conditionals, atomic groups, possessive
    quantifiers, POSIX classes, `{,n}`, or escapes that the two engines read
    differently. None when the pattern is portable.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # FutureWarning for `[[`: refused below anyway
            re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        return f"invalid regular expression ({exc})"
    i = 0
    in_class = False
    n = len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= n:
                return "a pattern cannot end with \\"
            nxt = pattern[i + 1]
            if nxt.isdigit():
                return (
                    f"backreferences and octal escapes (\\{nxt}) are not supported by every backend"
                )
            if nxt.isalpha() and nxt not in _PORTABLE_LETTER_ESCAPES:
                return f"\\{nxt} does not mean the same in every backend"
            i += 2
            continue
        if in_class:
            if ch == "[" and pattern[i + 1 : i + 2] in (":", "=", "."):
                return "POSIX classes such as [[:alpha:]] are not supported by every backend"
            if ch == "]":
                in_class = False
            i += 1
            continue
        if ch == "[":
            in_class = True
            i += 1
            # a `]` right after `[` or `[^` is a literal member
            if pattern[i : i + 1] == "^":
                i += 1
            if pattern[i : i + 1] == "]":
                i += 1
            continue
        if ch == "(" and pattern[i + 1 : i + 2] == "?":
            rest = pattern[i + 2 :]
            if rest.startswith(":"):
                i += 3
                continue
            if rest[:1] in ("=", "!") or rest[:2] in ("<=", "<!"):
                return "look-around ((?=, (?!, (?<=, (?<!) is not supported by every backend"
            if rest.startswith(("P<", "<")):
                return "named groups are not supported by every backend; use (...)"
            if rest.startswith("P="):
                return "backreferences are not supported by every backend"
            if rest.startswith(">"):
                return "atomic groups (?>...) are not supported by every backend"
            if rest.startswith("#"):
                return "comments (?#...) are not supported by every backend"
            if rest.startswith("("):
                return "conditional groups are not supported by every backend"
            return "inline flags such as (?i) are not supported by every backend"
        if ch in "*+?}" and pattern[i + 1 : i + 2] == "+":
            return "possessive quantifiers (*+, ++, ?+) are not supported by every backend"
        if ch == "{":
            match = _QUANTIFIER.match(pattern, i)
            if match is None:
                return "a { that is not a quantifier {m}, {m,} or {m,n}; write \\{ for a brace"
            i = match.end()
            if pattern[i : i + 1] == "+":
                return "possessive quantifiers ({m,n}+) are not supported by every backend"
            continue
        i += 1
    return None


def like_problem(pattern: str) -> str | None:
    """Why a `like` glob is malformed: only a trailing lone `\\` can make it so."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            if i + 1 >= len(pattern):
                return "a like pattern cannot end with a lone \\"
            i += 2
            continue
        i += 1
    return None
