"""The quick parser (dsl._QuickParser) gives exactly what lark's own parse gives.

It is only a faster loop over lark's tables: on text without a mistake it must build
the same AST with the same spans and the same diagnostics of the builder, and on text
with one the messages must be lark's, since lark parses such text again. Each test
compares a front end with the quick parser against the same front end with it turned
off, on the example rules, on generated rules and on mutated files.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.parse import generate
from policyd.grammar import dsl
from policyd.grammar.dsl import parse_expression, parse_policy_partial
from policyd.grammar.yaml_rules import parse_yaml_rules_partial
from tests.grammar.test_examples import EXAMPLE
from tests.grammar.test_fuzz import FUZZ, ODD, WORDS, mutated_example

ROOT = Path(__file__).resolve().parents[2]
POLICY_FILES = sorted(ROOT.glob("examples/**/*.policy")) + sorted(
    (ROOT / "tests").glob("**/bad/*.policy")
)
YAML_RULE_FILES = sorted(ROOT.glob("examples/**/rules/*.yaml")) + sorted(
    (ROOT / "tests").glob("**/bad/yaml-*.yaml")
)


@contextmanager
def lark_only() -> Iterator[None]:
    """Parse with lark's own loop, as before the quick parser."""
    saved = dsl._quick_parser
    dsl._quick_parser = lambda: None  # type: ignore[assignment]
    try:
        yield
    finally:
        dsl._quick_parser = saved


def same_both_ways(parse: Callable[[], Any]) -> Any:
    quick = parse()
    with lark_only():
        slow = parse()
    assert quick == slow
    return quick


def test_the_quick_parser_is_used() -> None:
    assert dsl._quick_parser() is not None


@pytest.mark.parametrize("path", POLICY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_policy_files(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    same_both_ways(lambda: parse_policy_partial(text, path.name))


@pytest.mark.parametrize("path", YAML_RULE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_yaml_rule_files(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    same_both_ways(lambda: parse_yaml_rules_partial(text, path.name))


def test_generated_rules_take_the_quick_path() -> None:
    """Every rule kind of the bench, in both forms; the quick parser reads them all."""
    text = generate(40)
    tree, diagnostics = same_both_ways(lambda: parse_policy_partial(text, "bench.policy"))
    assert diagnostics == [] and len(tree.rules) == 40
    quick = dsl._quick_parser()
    assert quick is not None
    dsl._INLINE.builder = dsl._Builder(dsl._Origin("bench.policy"), [])
    try:
        assert quick.parse(text, "start") == tree  # no fall back to lark
    finally:
        dsl._INLINE.builder = None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "# only a comment\n",
        "station 8IDI\n\n\n   # comment\nrule r protect files where x",
        "rule rule protect files where file.size > 1",  # reserved word as a name
        "rule r protect files where now.rule == 1",  # reserved word as an attribute
        "rule r protect files where t > 2026-13-45",  # an invalid time
        "rule r protect files where f(a = 1, 2)",  # positional after keyword
        "rule r protect files where f(a = 1, a = 2)",  # an argument twice
        "rule r priority 1.5 protect files where x",  # not an integer
        "rule r protect files where " + " or ".join(["x"] * 101),  # too deep
        "rule r protect files where x\nrule r2 protect files where y = 1",  # syntax error
        'rule r protect files where x == "open',  # unterminated string
        "rule r protect files where x == 'a'",  # a character no lexer takes
        "rule r protect files where x; y",
        "rule r replicate files where x copies 2 copies 3 on a, b",  # a clause twice
        "rule r\tprotect\r\nfiles where\tx\r\n",
    ],
)
def test_corner_cases(text: str) -> None:
    same_both_ways(lambda: parse_policy_partial(text, "corner.policy"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        'file.path like "*.h5" or file.size >= 1.5 TiB',
        'usage("voyager", station = "8IDI") > 80%',
        "not not -x + 3 days",
        "experiment.end is not null and age(experiment.end) > 90 days",
        'file.meta["beam-energy"] < 10 # a comment',
        "x ==",
        "rule",
    ],
)
def test_expressions(text: str) -> None:
    same_both_ways(lambda: parse_expression(text, "e.yaml", 11, 14))


@FUZZ
@given(mutated_example())
def test_mutated_rule_files(text: str) -> None:
    same_both_ways(lambda: parse_policy_partial(text, "fuzz.policy"))


@FUZZ
@given(st.lists(st.sampled_from([*WORDS, *ODD, " ", "\n"]), max_size=40).map("".join))
def test_token_soup_as_expressions(text: str) -> None:
    same_both_ways(lambda: parse_expression(text, "fuzz.yaml", 3, 7))


def test_the_example_file() -> None:
    tree, diagnostics = same_both_ways(lambda: parse_policy_partial(EXAMPLE, "example.policy"))
    assert diagnostics == [] and tree.rules


def test_no_terminal_starts_like_ignored_text() -> None:
    """The quick lexer skips spaces and comments before it tries the terminals."""
    parser = dsl._parser()
    ignored = set(parser.lexer_conf.ignore)
    for terminal in parser.terminals:
        if terminal.name in ignored:
            continue
        pattern = re.compile(terminal.pattern.to_regexp())
        for start in (" ", "\t", "\f", "\r", "\n", "#"):
            assert pattern.match(start + "x") is None, terminal.name


def test_a_state_it_does_not_read_goes_to_lark(monkeypatch: pytest.MonkeyPatch) -> None:
    """A state lexer set up otherwise than the loop expects matches nothing: lark parses."""
    quick = dsl._QuickParser(dsl._parser())
    unread = dsl._StateLexer(dsl._no_match, {}, frozenset())
    monkeypatch.setattr(quick._lexers, "_build", lambda lexer: unread)
    dsl._INLINE.builder = dsl._Builder(dsl._Origin("r.policy"), [])
    try:
        with pytest.raises(dsl._Mistake):
            quick.parse(EXAMPLE, "start")
    finally:
        dsl._INLINE.builder = None
    with lark_only():
        expected = parse_policy_partial(EXAMPLE, "r.policy")
    monkeypatch.setattr(dsl, "_quick_parser", lambda: quick)
    assert parse_policy_partial(EXAMPLE, "r.policy") == expected


def test_another_lark_gets_no_quick_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(lark: object) -> bool:
        raise AttributeError("no such internal")

    monkeypatch.setattr(dsl._QuickParser, "fits", staticmethod(missing))
    assert dsl._quick_parser.__wrapped__() is None
