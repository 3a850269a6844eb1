"""`matches` takes the regular expressions common to Python's re and PostgreSQL; `like` globs."""

from __future__ import annotations

import pytest

from policyd.rules.types import like_problem, regex_problem

PORTABLE = [
    "",
    "abc",
    "^scan_[0-9]{3}\\.h5$",
    "a{2,}b{1,3}c{4}",
    "(a|b)+?",
    "(?:ab)*",
    "[^/]+/[a-z_\\-]*",
    "[]a]",
    "[^]a]",
    "\\d\\D\\w\\W\\s\\S\\t\\n",
    "\\.\\*\\+\\?\\(\\)\\[\\]\\{\\}\\|\\^\\$\\\\",
    "\\Aabc\\Z",
    "a.*b",
    "x?y+z*",
]


@pytest.mark.parametrize("pattern", PORTABLE)
def test_portable_patterns(pattern: str) -> None:
    assert regex_problem(pattern) is None


NOT_PORTABLE = [
    ("a(?=b)", "look-around ((?=, (?!, (?<=, (?<!) is not supported by every backend"),
    ("a(?!b)", "look-around ((?=, (?!, (?<=, (?<!) is not supported by every backend"),
    ("(?<=a)b", "look-around ((?=, (?!, (?<=, (?<!) is not supported by every backend"),
    ("(?<!a)b", "look-around ((?=, (?!, (?<=, (?<!) is not supported by every backend"),
    ("(a)\\1", "backreferences and octal escapes (\\1) are not supported by every backend"),
    ("(?P<n>a)", "named groups are not supported by every backend; use (...)"),
    ("(?P<n>a)(?P=n)", "named groups are not supported by every backend; use (...)"),
    ("(?>ab)", "atomic groups (?>...) are not supported by every backend"),
    ("a*+", "possessive quantifiers (*+, ++, ?+) are not supported by every backend"),
    ("a++", "possessive quantifiers (*+, ++, ?+) are not supported by every backend"),
    ("a{2}+", "possessive quantifiers ({m,n}+) are not supported by every backend"),
    ("(?i)abc", "inline flags such as (?i) are not supported by every backend"),
    ("(?#note)a", "comments (?#...) are not supported by every backend"),
    ("(a)?(?(1)b|c)", "conditional groups are not supported by every backend"),
    ("\\bword\\b", "\\b does not mean the same in every backend"),
    ("\\x41", "\\x does not mean the same in every backend"),
    ("\\u0041", "\\u does not mean the same in every backend"),
    ("[[:alpha:]]", "POSIX classes such as [[:alpha:]] are not supported by every backend"),
    ("a{,3}", "a { that is not a quantifier {m}, {m,} or {m,n}; write \\{ for a brace"),
    ("a{x", "a { that is not a quantifier {m}, {m,} or {m,n}; write \\{ for a brace"),
    ("a(b", "invalid regular expression (missing ), unterminated subpattern at position 1)"),
    ("*a", "invalid regular expression (nothing to repeat at position 0)"),
    ("[a", "invalid regular expression (unterminated character set at position 0)"),
]


@pytest.mark.parametrize(("pattern", "reason"), NOT_PORTABLE)
def test_patterns_outside_the_subset(pattern: str, reason: str) -> None:
    assert regex_problem(pattern) == reason


@pytest.mark.parametrize("pattern", ["*.h5", "scratch/**", "a?b", "a\\*b", "\\\\", ""])
def test_like_patterns(pattern: str) -> None:
    assert like_problem(pattern) is None


def test_like_pattern_ending_in_a_backslash() -> None:
    assert like_problem("abc\\") == "a like pattern cannot end with a lone \\"
