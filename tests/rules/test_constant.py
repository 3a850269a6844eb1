"""constant_value finds conditions that are the same for every file, by the null rule."""

from __future__ import annotations

import pytest

from policyd.rules.typecheck import constant_value
from tests.rules.helpers import parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("false", False),
        ("not true", False),
        ("false and file.size > 1 GB", False),
        ("file.size > 1 GB and false", False),
        ("true or file.size > 1 GB", True),
        ("file.size > 1 GB or not false", True),
        ("file.size > null", False),
        ("null < now", False),
        ("not (file.size > null)", True),
        ("null == null", True),
        ("null != null", False),
        ('null == "x"', False),
        ('"x" != null', True),
        ("file.ext in []", False),
        ("null in [1, 2]", False),
        ("2 in [1, 2]", True),
        ('"c" in ["a", "b"]', False),
        ("1 GB > 10 MB", True),
        ("1000000000 == 1 GB", True),
        ("0.8 == 80%", True),
        ("1 day + 1 day == 2 days", True),
        ("(null + 1) > 0", False),
        ("null + 1 == null", True),
        ("null is null", True),
        ("1 is not null", True),
        ('null like "*"', False),
        ('null matches "a"', False),
        ("-(1 GB) < 0 B", True),
        ('"a" < "b"', True),
    ],
)
def test_constant(text: str, expected: bool) -> None:
    assert constant_value(parse(text)) is expected


@pytest.mark.parametrize(
    "text",
    [
        "file.size > 1 GB",
        "file.size > 1 GB and true",
        "file.size > 1 GB or false",
        "now > 2026-01-01",
        "2026-01-02 > 2026-01-01",
        "file.md5 is null",
        'file.ext in ["h5"]',
        '"a" like "*"',
        "file.meta.x == null",
    ],
)
def test_not_constant(text: str) -> None:
    assert constant_value(parse(text)) is None
