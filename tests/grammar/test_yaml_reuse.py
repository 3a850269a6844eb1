"""The YAML reader reuses an expression it read before: the result is as if parsed anew.

An expression seen again is the earlier node moved to its new place, so every span
(and every message about it) must be the one a parse in place gives; an expression
with a mistake is parsed each time, and reports each time, at its own place.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given

from bench.parse import generate
from policyd.diagnostics import Diagnostic
from policyd.grammar import ast
from policyd.grammar.dsl import parse_expression, parse_policy
from policyd.grammar.printers import to_yaml
from policyd.grammar.yaml_rules import _Reader, parse_yaml_rules_partial
from tests.grammar.test_fuzz import FUZZ, ODD, mutated
from tests.grammar.test_quick_parse import YAML_RULE_FILES


def both_ways(text: str) -> tuple[object, object]:
    """The file read as it is, and with every expression parsed in place."""
    reused = parse_yaml_rules_partial(text, "rules.yaml")
    saved = _Reader._parse_in_place

    def in_place(
        self: _Reader, value: str, line: int, col: int
    ) -> tuple[ast.Expr | None, list[Diagnostic]]:
        return parse_expression(value, self.file, line - 1, col - 1)

    _Reader._parse_in_place = in_place  # type: ignore[method-assign]
    try:
        fresh = parse_yaml_rules_partial(text, "rules.yaml")
    finally:
        _Reader._parse_in_place = saved  # type: ignore[method-assign]
    return reused, fresh


def bench_yaml(count: int) -> str:
    tree, diagnostics = parse_policy(generate(count), "bench.policy")
    assert tree is not None, diagnostics
    return to_yaml(tree)


def test_the_bench_rules() -> None:
    """Every rule kind five times over: most expressions are reused."""
    reused, fresh = both_ways(bench_yaml(50))
    assert reused == fresh
    tree, diagnostics = reused  # type: ignore[misc]
    assert diagnostics == [] and len(tree.rules) == 50


REPEATED = """\
version: 1
rules:
  - name: a
    protect: {where: 'file.size > 1 GB'}
  - name: b
    protect:
      where: file.size > 1 GB
  - name: c
    protect:
         where:    "file.size > 1 GB"
  - name: d
    alarm:
      - {when: 'usage("voyager") > 90%', for: 1 day}
      - when: usage("voyager") > 90%
        for: 1 day
"""


def test_the_same_expression_in_other_columns() -> None:
    reused, fresh = both_ways(REPEATED)
    assert reused == fresh
    tree, diagnostics = reused  # type: ignore[misc]
    assert diagnostics == []
    wheres = [rule.statements[0].where.span for rule in tree.rules[:3]]
    assert [(s.line, s.col, s.end_line, s.end_col) for s in wheres] == [
        (4, 23, 4, 39),
        (7, 14, 7, 30),
        (10, 21, 10, 37),
    ]


def test_a_repeated_mistake_is_reported_at_each_place() -> None:
    text = REPEATED.replace("file.size > 1 GB", "file.size >> 1 GB")
    reused, fresh = both_ways(text)
    assert reused == fresh
    _, diagnostics = reused  # type: ignore[misc]
    assert [(d.span.line, d.span.col) for d in diagnostics if d.span] == [
        (4, 34),
        (7, 25),
        (10, 32),
    ]


@FUZZ
@given(mutated(list(REPEATED), [*ODD, "'", '"', " ", ": "]))
def test_mutated_files(text: str) -> None:
    reused, fresh = both_ways(text)
    assert reused == fresh


@pytest.mark.parametrize("path", YAML_RULE_FILES, ids=lambda p: p.name)
def test_rule_files(path: Path) -> None:
    reused, fresh = both_ways(path.read_text(encoding="utf-8"))
    assert reused == fresh
