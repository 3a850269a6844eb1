"""Sizes, durations and percentages as people write them in config and rules.

Storage administrators think in `20 TB` and `90 days`, not in bytes and seconds, so
every place that takes a quantity accepts the written form and turns it into a plain
number here, in one place, so that the site config and the rules language agree on
what `1.5 TiB` means. The unit tables are module-level data because the rules grammar
builds its size and duration literals from the same tables.

Unit names are matched without regard to case (`20 tb` is `20 TB`): no two units in
the tables differ only in case, and nobody writes bits in a storage policy.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Final

#: Decimal (SI) size units, as disks and tapes are sold.
DECIMAL_SIZE_UNITS: Final[dict[str, int]] = {
    "B": 1,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "PB": 10**15,
}

#: Binary (IEC) size units, as `df -h` and file systems count.
BINARY_SIZE_UNITS: Final[dict[str, int]] = {
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
    "PiB": 2**50,
}

#: Every size unit and its factor in bytes.
SIZE_UNITS: Final[dict[str, int]] = {**DECIMAL_SIZE_UNITS, **BINARY_SIZE_UNITS}

_MINUTE: Final = 60
_HOUR: Final = 60 * _MINUTE
_DAY: Final = 24 * _HOUR

#: Every duration unit and its length in seconds. A month is 30 days and a year 365,
#: so that `6 months` means the same on every day of the calendar.
DURATION_UNITS: Final[dict[str, int]] = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "min": _MINUTE,
    "minute": _MINUTE,
    "minutes": _MINUTE,
    "h": _HOUR,
    "hour": _HOUR,
    "hours": _HOUR,
    "d": _DAY,
    "day": _DAY,
    "days": _DAY,
    "w": 7 * _DAY,
    "week": 7 * _DAY,
    "weeks": 7 * _DAY,
    "month": 30 * _DAY,
    "months": 30 * _DAY,
    "y": 365 * _DAY,
    "year": 365 * _DAY,
    "years": 365 * _DAY,
}

#: A non-negative decimal number as written in config and rules (no exponent, no sign).
NUMBER_PATTERN: Final = r"(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)"

_QUANTITY_RE: Final = re.compile(rf"^\s*({NUMBER_PATTERN})\s*([A-Za-z]*)\s*$")
_PERCENT_RE: Final = re.compile(rf"^\s*({NUMBER_PATTERN})\s*%\s*$")

_SIZE_BY_FOLDED: Final = {name.lower(): factor for name, factor in SIZE_UNITS.items()}
_DURATION_BY_FOLDED: Final = {name.lower(): factor for name, factor in DURATION_UNITS.items()}

SIZE_FORMS: Final = (
    "a number of bytes, or a number and a unit: B, KB, MB, GB, TB, PB (decimal) "
    "or KiB, MiB, GiB, TiB, PiB (binary), e.g. '20 TB' or '1.5TiB'"
)
DURATION_FORMS: Final = (
    "a number and a unit: s, sec, second(s), min, minute(s), h, hour(s), d, day(s), "
    "w, week(s), month(s) (30 days), y, year(s) (365 days), e.g. '15 min' or '1.5 h'"
)
PERCENT_FORMS: Final = "a number followed by '%', e.g. '80%'"


def size_factor(unit: str) -> int | None:
    """Bytes per `unit`, or None when it is not a size unit (any case)."""
    return _SIZE_BY_FOLDED.get(unit.lower())


def duration_factor(unit: str) -> int | None:
    """Seconds per `unit`, or None when it is not a duration unit (any case)."""
    return _DURATION_BY_FOLDED.get(unit.lower())


def _shown(value: object) -> str:
    return repr(value) if isinstance(value, str) else str(value)


MAX_SIZE = (1 << 63) - 1  # what the catalog's BIGINT columns hold: 9.2 EB


def parse_size(value: str | int | float) -> int:
    """Bytes in `value`; a bare number is bytes and fractions of a byte are rounded."""
    size = _parse_size(value)
    if size > MAX_SIZE:
        raise ValueError(f"{_shown(value)} is more than policyd can count (9.2 EB)")
    return size


def _parse_size(value: str | int | float) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{_shown(value)} is not a size; write {SIZE_FORMS}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{value} is not a size; write {SIZE_FORMS}")
        if not value.is_integer():
            raise ValueError(f"{value} bytes is not a whole number of bytes; write {SIZE_FORMS}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"{_shown(value)} is not a size; write {SIZE_FORMS}")
    match = _QUANTITY_RE.match(value)
    if match is None:
        if value.strip().startswith("-"):
            raise ValueError(f"a size cannot be negative, got {_shown(value)}")
        raise ValueError(f"{_shown(value)} is not a size; write {SIZE_FORMS}")
    number, unit = match.groups()
    factor = size_factor(unit) if unit else 1
    if factor is None:
        raise ValueError(f"{_shown(value)}: unknown size unit {unit!r}; write {SIZE_FORMS}")
    try:
        exact = Decimal(number) * factor
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only numbers
        raise ValueError(f"{_shown(value)} is not a size; write {SIZE_FORMS}") from exc
    return int(exact.to_integral_value(rounding=ROUND_HALF_EVEN))


def parse_duration(value: str | int | float, *, bare_seconds: bool = False) -> float:
    """Seconds in `value`.

    A duration written in config or rules must carry its unit, because a bare `90` is
    as likely meant as days as seconds; `bare_seconds=True` is for callers that already
    hold a number of seconds (a command-line option documented as seconds, say).
    """
    if isinstance(value, bool):
        raise ValueError(f"{_shown(value)} is not a duration; write {DURATION_FORMS}")
    if isinstance(value, int | float):
        if bare_seconds and math.isfinite(value) and value >= 0:
            return float(value)
        raise ValueError(f"{_shown(value)} has no unit; a duration needs one: {DURATION_FORMS}")
    if not isinstance(value, str):
        raise ValueError(f"{_shown(value)} is not a duration; write {DURATION_FORMS}")
    match = _QUANTITY_RE.match(value)
    if match is None:
        if value.strip().startswith("-"):
            raise ValueError(f"a duration cannot be negative, got {_shown(value)}")
        raise ValueError(f"{_shown(value)} is not a duration; write {DURATION_FORMS}")
    number, unit = match.groups()
    if not unit:
        if bare_seconds:
            return float(number)
        raise ValueError(f"{_shown(value)} has no unit; a duration needs one: {DURATION_FORMS}")
    factor = duration_factor(unit)
    if factor is None:
        raise ValueError(f"{_shown(value)}: unknown duration unit {unit!r}; write {DURATION_FORMS}")
    return float(Decimal(number) * factor)


def parse_percent(value: str | int | float, *, bare_fraction: bool = False) -> float:
    """The fraction in `value`: `'80%'` is 0.8.

    A bare number is refused unless `bare_fraction` is set, because `80` could mean
    80% or 8000%; with it, a number is taken as the fraction itself (`0.8`), as the
    rules language compares bare numbers with percentages.
    """
    if isinstance(value, bool):
        raise ValueError(f"{_shown(value)} is not a percentage; write {PERCENT_FORMS}")
    if isinstance(value, int | float):
        if bare_fraction and math.isfinite(value) and value >= 0:
            return float(value)
        raise ValueError(f"{_shown(value)} is not a percentage; write {PERCENT_FORMS}")
    if not isinstance(value, str):
        raise ValueError(f"{_shown(value)} is not a percentage; write {PERCENT_FORMS}")
    match = _PERCENT_RE.match(value)
    if match is None:
        raise ValueError(f"{_shown(value)} is not a percentage; write {PERCENT_FORMS}")
    return float(Decimal(match.group(1)) / 100)


def _trim(number: float, decimals: int = 2) -> str:
    text = f"{number:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_size(size: int) -> str:
    """A size for people, in decimal units with at most two decimals (`1.63 TB`).

    The text parses back with `parse_size` to within half a unit of the last decimal.
    """
    if size < 0:
        return "-" + format_size(-size)
    units = list(DECIMAL_SIZE_UNITS.items())
    for index in range(len(units) - 1, 0, -1):
        name, factor = units[index]
        if size >= factor:
            shown = round(size / factor, 2)
            if shown >= 1000 and index + 1 < len(units):
                name, factor = units[index + 1]
                shown = round(size / factor, 2)
            return f"{_trim(shown)} {name}"
    return f"{size} B"


_DURATION_STEPS: Final = (
    (1, "s", "s"),
    (_MINUTE, "min", "min"),
    (_HOUR, "hour", "hours"),
    (_DAY, "day", "days"),
)


def format_duration(seconds: float) -> str:
    """A duration for people in the largest fitting unit up to days (`90 days`, `1.5 hours`).

    Days are the largest unit because months and years here are fixed lengths that a
    reader would take for calendar ones. The text parses back with `parse_duration`.
    """
    if seconds < 0:
        return "-" + format_duration(-seconds)
    index = 0
    for step, (factor, _, _) in enumerate(_DURATION_STEPS):
        if seconds >= factor:
            index = step
    shown = round(seconds / _DURATION_STEPS[index][0], 2)
    if index + 1 < len(_DURATION_STEPS):
        bigger = _DURATION_STEPS[index + 1][0]
        if shown * _DURATION_STEPS[index][0] >= bigger:
            index += 1
            shown = round(seconds / bigger, 2)
    _, singular, plural = _DURATION_STEPS[index]
    text = _trim(shown)
    return f"{text} {singular if text == '1' else plural}"
