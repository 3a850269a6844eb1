"""Whatever the text, the parser answers with an AST or with diagnostics, never a traceback.

The mutations start from the spec's example file, because text that is almost right
reaches far deeper into the grammar (and into the error adapter) than random bytes.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policyd.diagnostics import Diagnostic
from policyd.grammar import ast
from policyd.grammar.dsl import parse_expression, parse_policy, parse_policy_partial
from policyd.rules.passes import CheckContext, RuleFile, SiteNames, run_passes
from tests.grammar.test_examples import EXAMPLE

_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[A-Za-z0-9_][A-Za-z0-9_\-]*|\s+|.', re.DOTALL)
TOKENS = _TOKEN.findall(EXAMPLE)
WORDS = sorted({t for t in TOKENS if not t.isspace()})
ODD = [
    '"',
    "'",
    "\\",
    "(",
    ")",
    "[",
    "]",
    "%",
    "-",
    "=",
    "#",
    "\n",
    "\t",
    "\r",
    "\x00",
    "é",
    "10GB",
    "1.5.5",
    "2026-99-99",
]

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_answer(result: tuple[object, list[Diagnostic]]) -> None:
    tree, diagnostics = result
    if tree is None:
        assert diagnostics, "neither an AST nor a diagnostic"
    else:
        assert diagnostics == []
    for diagnostic in diagnostics:
        assert diagnostic.code != "internal-error", diagnostic.message
        assert diagnostic.span is not None and diagnostic.span.line >= 1
        assert diagnostic.message


@st.composite
def mutated(draw: st.DrawFn, tokens: Sequence[str], extra: Sequence[str]) -> str:
    """A text made of `tokens` with a few deleted, doubled, swapped, replaced by
    another token or by one of `extra`, or with one of `extra` inserted."""
    words = sorted({t for t in tokens if not t.isspace()}) + list(extra)
    out = list(tokens)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(out) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "swap", "replace", "insert"]))
        if action == "delete":
            del out[at]
        elif action == "duplicate":
            out.insert(at, out[at])
        elif action == "swap" and at + 1 < len(out):
            out[at], out[at + 1] = out[at + 1], out[at]
        elif action == "replace":
            out[at] = draw(st.sampled_from(words))
        else:
            out.insert(at, draw(st.sampled_from(list(extra)) | st.characters()))
        if not out:
            break
    return "".join(out)


def mutated_example() -> st.SearchStrategy[str]:
    return mutated(TOKENS, ODD)


@FUZZ
@given(mutated_example())
def test_mutated_rule_files(text: str) -> None:
    assert_answer(parse_policy(text, "fuzz.policy"))


@FUZZ
@given(mutated_example())
def test_the_partial_tree_of_mutated_files_checks(text: str) -> None:
    """The rules that parsed form a File the checker's passes take without failing."""
    tree, diagnostics = parse_policy_partial(text, "fuzz.policy")
    assert isinstance(tree, ast.File)
    assert_answer((None if diagnostics else tree, diagnostics))
    if not diagnostics:
        assert parse_policy(text, "fuzz.policy") == (tree, [])
    run_passes(CheckContext([RuleFile("fuzz.policy", text, tree)], SiteNames()))


@FUZZ
@given(st.lists(st.sampled_from([*WORDS, *ODD, " ", " "]), max_size=40).map("".join))
def test_random_token_soup(text: str) -> None:
    assert_answer(parse_policy(text, "fuzz.policy"))


@FUZZ
@given(st.text(max_size=60))
def test_random_text(text: str) -> None:
    assert_answer(parse_policy(text, "fuzz.policy"))
    assert_answer(parse_expression(text, "fuzz.yaml", 3, 7))


def test_deep_nesting_is_a_diagnostic() -> None:
    text = "rule r protect files where " + "not " * 5000 + "x"
    tree, diagnostics = parse_policy(text, "deep.policy")
    assert tree is None
    assert [d.code for d in diagnostics] == ["too-deep"]
    tree, diagnostics = parse_policy(
        "rule r protect files where " + " or ".join(["x"] * 101), "long.policy"
    )
    assert [d.code for d in diagnostics] == ["too-deep"]
    tree, diagnostics = parse_policy(
        "rule r protect files where " + " or ".join(["x"] * 100), "long.policy"
    )
    assert diagnostics == []
