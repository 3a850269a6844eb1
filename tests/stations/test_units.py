"""Sizes, durations and percentages as written by people."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policyd.units import (
    DURATION_UNITS,
    SIZE_UNITS,
    format_duration,
    format_size,
    parse_duration,
    parse_percent,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10 GB", 10 * 10**9),
        ("10GB", 10 * 10**9),
        ("1.5 TiB", 3 * 2**39),
        ("20 TB", 20 * 10**12),
        ("1.5 PB", 15 * 10**14),
        ("512 B", 512),
        ("4 KiB", 4096),
        ("2 MiB", 2 * 2**20),
        ("1 GiB", 2**30),
        ("1 PiB", 2**50),
        ("3 KB", 3000),
        ("7 MB", 7 * 10**6),
        ("20 tb", 20 * 10**12),
        ("  1.63 TB  ", 1_630_000_000_000),
        (".5 KB", 500),
        ("1024", 1024),
        (1024, 1024),
        (2048.0, 2048),
        (0, 0),
    ],
)
def test_parse_size(text: str | int | float, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("1.5 XB", "unknown size unit 'XB'"),
        ("ten GB", "is not a size"),
        ("-1 GB", "cannot be negative"),
        (-5, "cannot be negative"),
        ("", "is not a size"),
        (True, "is not a size"),
        (1.5, "not a whole number of bytes"),
        ("1 GB 2 MB", "is not a size"),
    ],
)
def test_parse_size_rejects(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_size(value)  # type: ignore[arg-type]
    assert fragment in str(caught.value)


def test_size_error_says_what_is_accepted() -> None:
    with pytest.raises(ValueError) as caught:
        parse_size("1.5 XB")
    message = str(caught.value)
    for unit in ("B", "KB", "MB", "GB", "TB", "PB", "KiB", "MiB", "GiB", "TiB", "PiB"):
        assert unit in message


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("15 min", 900.0),
        ("1.5 h", 5400.0),
        ("24 hours", 86400.0),
        ("30 s", 30.0),
        ("30s", 30.0),
        ("1 sec", 1.0),
        ("2 seconds", 2.0),
        ("1 second", 1.0),
        ("1 minute", 60.0),
        ("3 minutes", 180.0),
        ("1 hour", 3600.0),
        ("1 d", 86400.0),
        ("1 day", 86400.0),
        ("90 days", 90 * 86400.0),
        ("1 w", 7 * 86400.0),
        ("2 weeks", 14 * 86400.0),
        ("1 week", 7 * 86400.0),
        ("1 month", 30 * 86400.0),
        ("6 months", 180 * 86400.0),
        ("1 y", 365 * 86400.0),
        ("1 year", 365 * 86400.0),
        ("2 years", 730 * 86400.0),
        ("0 s", 0.0),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("value", [90, 1.5, "90", " 42 "])
def test_duration_needs_its_unit(value: object) -> None:
    with pytest.raises(ValueError, match="has no unit; a duration needs one") as caught:
        parse_duration(value)  # type: ignore[arg-type]
    assert "'15 min'" in str(caught.value)


def test_bare_seconds_when_the_caller_says_so() -> None:
    assert parse_duration(90, bare_seconds=True) == 90.0
    assert parse_duration("90", bare_seconds=True) == 90.0


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("3 fortnights", "unknown duration unit 'fortnights'"),
        ("-3 days", "cannot be negative"),
        ("soon", "is not a duration"),
        (None, "is not a duration"),
        (False, "is not a duration"),
    ],
)
def test_parse_duration_rejects(value: object, fragment: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration(value)  # type: ignore[arg-type]
    assert fragment in str(caught.value)


def test_parse_percent() -> None:
    assert parse_percent("80%") == pytest.approx(0.8)
    assert parse_percent("12.5 %") == pytest.approx(0.125)
    assert parse_percent("150%") == pytest.approx(1.5)
    assert parse_percent(0.8, bare_fraction=True) == pytest.approx(0.8)
    for bad in ("80", 80, "x%", "-5%"):
        with pytest.raises(ValueError, match="followed by '%'"):
            parse_percent(bad)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (823_569, "823.57 KB"),
        (999_999, "1 MB"),
        (1_630_000_000_000, "1.63 TB"),
        (20 * 10**12, "20 TB"),
        (15 * 10**14, "1.5 PB"),
        (-2 * 10**9, "-2 GB"),
    ],
)
def test_format_size(size: int, text: str) -> None:
    assert format_size(size) == text


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (30, "30 s"),
        (59.999, "1 min"),
        (900, "15 min"),
        (3600, "1 hour"),
        (5400, "1.5 hours"),
        (86400, "1 day"),
        (90 * 86400, "90 days"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_unit_tables_are_shared_data() -> None:
    assert SIZE_UNITS["TiB"] == 2**40
    assert SIZE_UNITS["TB"] == 10**12
    assert DURATION_UNITS["month"] == 30 * 86400
    assert DURATION_UNITS["years"] == 365 * 86400


@given(st.integers(min_value=0, max_value=9 * 10**18))
def test_size_round_trip(size: int) -> None:
    back = parse_size(format_size(size))
    # two decimals of the chosen unit: off by at most half a unit of the last digit
    assert abs(back - size) <= max(0.005 * size, 0)


@given(st.floats(min_value=0, max_value=10 * 365 * 86400, allow_nan=False))
def test_duration_round_trip(seconds: float) -> None:
    back = parse_duration(format_duration(seconds))
    assert abs(back - seconds) <= max(0.005 * seconds, 0.005)


def test_a_size_beyond_what_the_catalog_holds_is_refused() -> None:
    assert parse_size("9000 PB") == 9 * 10**18
    with pytest.raises(ValueError, match="more than policyd can count"):
        parse_size("99999 PB")
