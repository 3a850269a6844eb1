"""Table tests for the type rules of spec/rules.md section 4, one row per rule or corner.

Each invalid row states the exact message: a change to a message is a reviewed diff.
"""

from __future__ import annotations

import pytest

from policyd.diagnostics import Span
from policyd.rules.typecheck import (
    FILE_VALUE,
    FILE_WHERE,
    GRANT_WHILE,
    LOCATIONS_WHERE,
    WHEN,
    Context,
    expression_text,
)
from policyd.rules.types import ANY, DURATION, NUMBER, PERCENT, SIZE, TEXT, TIME, list_of
from tests.rules.helpers import check, parse

CONTEXTS: dict[str, Context] = {
    "where": FILE_WHERE,
    "value": FILE_VALUE,
    "when": WHEN,
    "while": GRANT_WHILE,
    "locations": LOCATIONS_WHERE,
}

VALID: list[tuple[str, str]] = [
    # the spec's own examples
    ("where", 'file.path like "*.h5" or file.path like "*.imm"'),
    ("where", "experiment.end is null or experiment.end > now - 180 days"),
    ("where", "age(experiment.end) > 90 days"),
    ("where", "experiment.meta.doi is not null"),
    ("where", 'file.path like "scratch/**"'),
    ("when", 'usage("voyager") > 90%'),
    ("when", 'usage("voyager", station = "8IDI") > 80%'),
    ("when", 'time_to_full("voyager") < 120 days'),
    ("while", "experiment.active or experiment.end > now - 30 days"),
    ("where", 'file.path like "*.imm"'),
    # bare numbers: bytes with sizes, fractions with percents
    ("where", "file.size > 10 GB"),
    ("where", "file.size > 1000000"),
    ("when", 'usage("voyager") > 0.8'),
    ("when", '0.8 < usage("voyager")'),
    # time arithmetic
    ("where", "now - file.modified > 30 days"),
    ("where", "file.created + 1 day < now"),
    ("where", "1 day + file.created < now"),
    ("where", "experiment.start > 2026-01-01"),
    ("where", "experiment.start < 2026-01-31T12:00:00Z"),
    ("where", "age(file.modified) >= 1.5 h"),
    # arithmetic within a kind
    ("where", "file.size - 1 GB > 10 GB"),
    ("when", 'usage("voyager") - 10% > 70%'),
    ("when", 'used("voyager") + free("voyager") > 1 PB'),
    ("where", "-(file.size - 1 GB) < 0 B"),
    ("where", "copies() + 1 > 2"),
    # membership
    ("where", '"d64944" in experiment.users'),
    ("where", 'file.ext in ["h5", "tif"]'),
    ("where", "file.size in [1 GB, 2 GB]"),
    ("where", "file.meta.run in [1, 2, 3]"),
    ("where", "file.ext in []"),
    ("where", "file.meta.tags is null or file.name in file.meta.tags"),
    # metadata is untyped
    ("where", 'file.meta["beam-energy"] > 3'),
    ("where", 'file.meta.sample != "x"'),
    ("where", "experiment.meta.published"),
    ("where", "file.meta.when < now - 1 day"),
    # null
    ("where", "file.md5 is null"),
    ("where", "file.md5 == null"),
    ("where", "null == null"),
    ("where", "not (experiment.end > now)"),
    # other functions and attributes
    ("where", 'copies(tier = "tape") >= 1 and copies(location = "voyager") == 0'),
    ("where", 'path_on("voyager") is not null'),
    ("where", 'station == "8IDI" and experiment.station == "8IDI"'),
    ("where", "experiment.pinned == false and not experiment.active"),
    ("where", 'file.name matches "^scan_[0-9]{3,}\\.h5$"'),
    ("where", 'file.name matches "(?:a|b)+\\d*?"'),
    ("where", 'file.dir == "" and file.ext != "h5"'),
    ("locations", 'location.tier == "disk" and location.site != "alcf"'),
    ("locations", 'location.name in ["voyager", "hpc"]'),
    ("value", "file.modified"),
    ("value", "experiment.meta.qmap"),
    ("where", "true"),
]


@pytest.mark.parametrize(("context", "text"), VALID)
def test_valid(context: str, text: str) -> None:
    _, diagnostics = check(text, CONTEXTS[context])
    assert diagnostics == []


# (context, text, code, message, hint)
INVALID: list[tuple[str, str, str, str, str | None]] = [
    # durations and sizes do not meet
    (
        "where",
        "file.size > 90 days",
        "type-mismatch",
        "cannot compare size with duration: file.size > 90 days",
        None,
    ),
    # a duration always needs its unit
    (
        "where",
        "age(experiment.end) > 90",
        "duration-needs-unit",
        "cannot compare duration with a bare number: age(experiment.end) > 90",
        "a duration needs its unit: write 90 days (or s, min, h, w, y)",
    ),
    (
        "where",
        "now - 90 > experiment.start",
        "duration-needs-unit",
        "cannot subtract a bare number from time: now - 90",
        "a duration needs its unit: write 90 days (or s, min, h, w, y)",
    ),
    (
        "where",
        "age(file.created) + 1 > 2 days",
        "duration-needs-unit",
        "cannot add duration and a bare number: age(file.created) + 1",
        "a duration needs its unit: write 1 day (or s, min, h, w, y)",
    ),
    # time
    (
        "where",
        'experiment.start > "2026-01-01"',
        "type-mismatch",
        'cannot compare time with text: experiment.start > "2026-01-01"',
        "write a time without quotes: 2026-01-31 or 2026-01-31T12:00:00Z",
    ),
    (
        "where",
        "experiment.end > 90 days",
        "type-mismatch",
        "cannot compare time with duration: experiment.end > 90 days",
        "a point in time is `now - 90 days`; a span of time is `age(T)`",
    ),
    (
        "where",
        "1 day - now > now",
        "type-mismatch",
        "cannot subtract time from duration: 1 day - now",
        "subtract the duration from the time: `now - 90 days`",
    ),
    (
        "where",
        "now + now > now",
        "type-mismatch",
        "cannot add time and time: now + now",
        None,
    ),
    # arithmetic across kinds
    (
        "where",
        "file.size + 1 > 3",
        "type-mismatch",
        "cannot add size and a bare number: file.size + 1",
        "write the number with its unit, e.g. 1 GB",
    ),
    (
        "when",
        'usage("voyager") - 0.1 > 0.5',
        "type-mismatch",
        'cannot subtract a bare number from percent: usage("voyager") - 0.1',
        "write the number with its unit, e.g. 0.1%",
    ),
    (
        "where",
        'file.name + "x" == "y"',
        "type-mismatch",
        'cannot add text and text: file.name + "x"',
        None,
    ),
    (
        "where",
        "-file.name == 1",
        "type-mismatch",
        "cannot negate text: -file.name",
        None,
    ),
    # comparisons
    (
        "where",
        "file.size > file.name",
        "type-mismatch",
        "cannot compare size with text: file.size > file.name",
        None,
    ),
    (
        "when",
        'usage("voyager") > 1 TB',
        "type-mismatch",
        'cannot compare percent with size: usage("voyager") > 1 TB',
        None,
    ),
    (
        "where",
        "experiment.pinned < true",
        "type-mismatch",
        "bool values have no order for <: experiment.pinned < true",
        None,
    ),
    (
        "where",
        'experiment.users == ["a"]',
        "type-mismatch",
        'cannot compare list of text values with ==: experiment.users == ["a"]',
        "use `in` to test membership in a list",
    ),
    # in
    (
        "where",
        'file.name in "abc"',
        "type-mismatch",
        'in needs a list on its right, got text: file.name in "abc"',
        'for text inside text use like: file.name like "*x*"',
    ),
    (
        "where",
        "5 in experiment.users",
        "type-mismatch",
        "cannot look for number in a list of text: 5 in experiment.users",
        None,
    ),
    (
        "where",
        'file.ext in [1, "a"]',
        "type-mismatch",
        'a list holds values of one type, not number and text: [1, "a"]',
        None,
    ),
    # like and matches
    (
        "where",
        'file.size like "1*"',
        "type-mismatch",
        'like needs text, got size: file.size like "1*"',
        None,
    ),
    (
        "where",
        'file.created matches "2026"',
        "type-mismatch",
        'matches needs text, got time: file.created matches "2026"',
        None,
    ),
    (
        "where",
        'file.name like "a\\\\"',
        "bad-pattern",
        'a like pattern cannot end with a lone \\: file.name like "a\\\\"',
        "like takes * ** ? and \\ escapes; write \\\\ for a backslash",
    ),
    (
        "where",
        'file.name matches "scan(?=_1)"',
        "bad-pattern",
        "look-around ((?=, (?!, (?<=, (?<!) is not supported by every backend: "
        'file.name matches "scan(?=_1)"',
        "matches takes the regular expressions common to Python and PostgreSQL: "
        ". [...] [^...] * + ? {m,n} | (...) (?:...) ^ $ \\d \\w \\s",
    ),
    # conditions
    (
        "where",
        "file.size",
        "not-a-condition",
        "A `where` condition must be true or false, got size: file.size",
        "compare it, e.g. file.size > 10 GB",
    ),
    (
        "where",
        "experiment.end",
        "not-a-condition",
        "A `where` condition must be true or false, got time: experiment.end",
        "compare it, e.g. experiment.end < now - 90 days",
    ),
    (
        "when",
        'usage("voyager")',
        "not-a-condition",
        'A `when` condition must be true or false, got percent: usage("voyager")',
        'compare it, e.g. usage("voyager") > 80%',
    ),
    (
        "where",
        "null",
        "not-a-condition",
        "A `where` condition must be true or false, got null: null",
        "to test for a missing value write `E is null`",
    ),
    (
        "where",
        "file.name and true",
        "not-a-condition",
        "each side of `and` must be true or false, got text: file.name",
        'compare it, e.g. file.name == "x"',
    ),
    (
        "while",
        "not experiment.users",
        "not-a-condition",
        "the operand of `not` must be true or false, got list of text: experiment.users",
        'compare it, e.g. "x" in experiment.users',
    ),
    # names
    (
        "where",
        "file.szie > 1 GB",
        "unknown-attribute",
        "unknown attribute file.szie",
        "did you mean file.size?",
    ),
    (
        "where",
        "experiment.ned is null",
        "unknown-attribute",
        "unknown attribute experiment.ned",
        "did you mean experiment.end?",
    ),
    (
        "where",
        'file.mta.sample == "x"',
        "unknown-attribute",
        "unknown attribute file.mta.sample",
        "did you mean file.meta.sample?",
    ),
    (
        "where",
        "file.meta == 1",
        "unknown-attribute",
        "file.meta needs a key",
        'write file.meta.KEY, or file.meta["KEY"] for a key that is not an identifier',
    ),
    (
        "where",
        "file.meta.a.b == 1",
        "unknown-attribute",
        "unknown attribute file.meta.a.b: a metadata key is one name",
        'for a key with dots write file.meta["a.b"]',
    ),
    (
        "where",
        'file.path["x"] == 1',
        "unknown-attribute",
        'only file.meta and experiment.meta take a key in brackets: file.path["x"]',
        None,
    ),
    (
        "where",
        "agee(file.created) > 1 day",
        "unknown-function",
        "unknown function agee()",
        "did you mean age()?",
    ),
    (
        "when",
        'usgae("voyager") > 80%',
        "unknown-function",
        "unknown function usgae()",
        "did you mean usage()?",
    ),
    # arguments
    (
        "where",
        "age() > 1 day",
        "wrong-arguments",
        "age() takes 1 argument, got 0: age()",
        "call it as age(T)",
    ),
    (
        "where",
        'copies("tape") > 1',
        "wrong-arguments",
        'copies() takes no arguments, got 1: copies("tape")',
        'call it as copies([tier = "TIER"] [, location = "LOCATION"])',
    ),
    (
        "where",
        'copies(tir = "tape") >= 1',
        "wrong-arguments",
        'copies() has no argument tir: copies(tir = "tape")',
        "did you mean tier?",
    ),
    (
        "when",
        'free("voyager", station = "8IDI") > 1 TB',
        "wrong-arguments",
        'free() takes no keyword arguments: free("voyager", station = "8IDI")',
        'call it as free("LOC")',
    ),
    (
        "where",
        "usage(file.name) > 0.5",
        "wrong-arguments",
        "usage() takes a location name as a quoted string: usage(file.name)",
        'call it as usage("LOC" [, station = "STATION"])',
    ),
    (
        "where",
        "age(file.size) > 1 day",
        "type-mismatch",
        "age() needs a time, got size: age(file.size)",
        "call it as age(T)",
    ),
    # where each root is known
    (
        "where",
        'location.tier == "disk"',
        "attribute-not-here",
        "location.tier is only known inside `locations where`",
        "use location.* in `on locations where E`",
    ),
    (
        "while",
        "file.size > 1 GB",
        "attribute-not-here",
        "file.size is not known in a grant's `while` condition",
        "a grant's `while` condition may use experiment.* and now",
    ),
    (
        "when",
        'experiment.name == "x"',
        "attribute-not-here",
        "experiment.name is not known in a `when` condition",
        "a `when` condition may use now",
    ),
    (
        "locations",
        "now > 2026-01-01",
        "attribute-not-here",
        "now is not known in `locations where`",
        "`locations where` may use location.*",
    ),
    (
        "when",
        "copies() > 1",
        "attribute-not-here",
        "copies() looks at a file and is not known in a `when` condition",
        "a `when` condition may use now",
    ),
    (
        "while",
        'file.meta.x == "y"',
        "attribute-not-here",
        "file.meta.x is not known in a grant's `while` condition",
        "a grant's `while` condition may use experiment.* and now",
    ),
]


@pytest.mark.parametrize(("context", "text", "code", "message", "hint"), INVALID)
def test_invalid(context: str, text: str, code: str, message: str, hint: str | None) -> None:
    _, diagnostics = check(text, CONTEXTS[context])
    assert [(d.code, d.message, d.hint) for d in diagnostics] == [(code, message, hint)]
    assert diagnostics[0].severity == "error"


def test_span_is_the_offending_node() -> None:
    _, [unknown] = check("file.size > 1 GB and file.szie > 1 GB", FILE_WHERE)
    assert unknown.span == Span("t.policy", 1, 22, 1, 31)
    _, [mismatch] = check('file.name == "a" or file.size > 90 days', FILE_WHERE)
    assert mismatch.span == Span("t.policy", 1, 21, 1, 40)
    _, [argument] = check("age(file.size) > 1 day", FILE_WHERE)
    assert argument.span == Span("t.policy", 1, 5, 1, 14)


def test_every_mistake_is_reported_once() -> None:
    _, diagnostics = check(
        "file.szie > 90 days or agee(now) > 1 and file.size > 90 days", FILE_WHERE
    )
    assert [d.code for d in diagnostics] == [
        "unknown-attribute",
        "unknown-function",
        "type-mismatch",
    ]


def test_no_cascade_from_a_bad_list() -> None:
    _, diagnostics = check('[1, "a"] == 1', FILE_WHERE)
    assert [d.code for d in diagnostics] == ["type-mismatch"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("file.size", SIZE),
        ("file.size - 1 GB", SIZE),
        ("now - file.created", DURATION),
        ("now - 1 day", TIME),
        ("file.name", TEXT),
        ("copies()", NUMBER),
        ('usage("voyager")', PERCENT),
        ("experiment.users", list_of(TEXT)),
        ('["a", "b"]', list_of(TEXT)),
        ("[]", list_of(ANY)),
        ("file.meta.x", ANY),
        ("file.meta.x + 1 day", ANY),
        ('time_to_full("voyager")', DURATION),
    ],
)
def test_value_types(text: str, expected: object) -> None:
    result, diagnostics = check(text, FILE_VALUE)
    assert diagnostics == []
    assert result == expected


@pytest.mark.parametrize(
    "text",
    [
        "file.size > 1.5 TiB",
        "now - 90 days",
        "age(experiment.end) > 1 day",
        'usage("voyager", station = "8IDI") > 80%',
        "not (a or b) and (c or d)",
        "a - (b - c)",
        "-(a + b)",
        'file.meta["beam-energy"] > 3',
        'file.name like "a\\"b"',
        "x is not null",
        "[1, 2.5, -3]",
    ],
)
def test_expression_text_reads_back(text: str) -> None:
    assert expression_text(parse(text)) == text
