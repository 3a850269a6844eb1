"""The type rules as functions, for the backends that ask them directly."""

from __future__ import annotations

import pytest

from policyd.rules.signatures import ATTRIBUTES, FUNCTIONS, attribute_names
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
    arithmetic,
    comparison,
    is_orderable,
    list_of,
)


def test_type_names() -> None:
    assert str(list_of(TEXT)) == "list of text"
    assert str(Type("list")) == "list of any"


@pytest.mark.parametrize(
    ("op", "left", "right", "result"),
    [
        ("-", TIME, TIME, DURATION),
        ("+", TIME, DURATION, TIME),
        ("-", TIME, DURATION, TIME),
        ("+", DURATION, TIME, TIME),
        ("+", SIZE, SIZE, SIZE),
        ("-", PERCENT, PERCENT, PERCENT),
        ("+", NUMBER, NUMBER, NUMBER),
        ("+", NULL, SIZE, NULL),
        ("-", ANY, TIME, ANY),
    ],
)
def test_arithmetic(op: str, left: Type, right: Type, result: Type) -> None:
    assert arithmetic(op, left, right) == result


@pytest.mark.parametrize(
    ("left", "right"),
    [(TIME, TIME), (SIZE, NUMBER), (NUMBER, PERCENT), (NULL, TIME), (ANY, SIZE), (TEXT, TEXT)],
)
def test_comparisons_allowed(left: Type, right: Type) -> None:
    assert comparison("<", left, right) is None


@pytest.mark.parametrize(
    ("left", "right", "code"),
    [
        (DURATION, NUMBER, "duration-needs-unit"),
        (SIZE, DURATION, "type-mismatch"),
        (PERCENT, SIZE, "type-mismatch"),
        (BOOL, BOOL, "type-mismatch"),
        (list_of(TEXT), TEXT, "type-mismatch"),
    ],
)
def test_comparisons_refused(left: Type, right: Type, code: str) -> None:
    problem = comparison("<", left, right)
    assert isinstance(problem, TypeProblem)
    assert problem.code == code


def test_orderable() -> None:
    assert is_orderable(TIME) and is_orderable(ANY)
    assert not is_orderable(BOOL) and not is_orderable(list_of(TEXT))


def test_tables() -> None:
    assert ATTRIBUTES["experiment.end"].nullable
    assert ATTRIBUTES["experiment.users"].type == list_of(TEXT)
    assert "file.meta.KEY" in attribute_names(frozenset({"file"}))
    assert "location.tier" not in attribute_names(frozenset({"file"}))
    assert FUNCTIONS["usage"].usage() == 'usage("LOC" [, station = "STATION"])'
    assert FUNCTIONS["copies"].needs == frozenset({"file"})
