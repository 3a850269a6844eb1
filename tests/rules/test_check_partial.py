"""A rule file with a mistake in one rule still gets its other rules checked.

The parsers give `policyd check` the rules that parsed cleanly next to the diagnostics
(`parse_policy_partial`, `parse_yaml_rules_partial`), so an unknown key or a syntax
error in one rule does not hide a type error or an unknown name in another.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from policyd.grammar.convert import convert_file
from policyd.grammar.dsl import parse_policy, parse_policy_partial
from policyd.grammar.yaml_rules import parse_yaml_rules, parse_yaml_rules_partial
from policyd.rules.check import check_site
from tests.rules.test_check import site_with_rules

YAML = """\
version: 1
station: 1ID
rules:
  - name: layout
    place:
      where: 'file.path like "*.h5"'
      on: voyager
      colour: blue
  - name: typo
    protect:
      where: "file.size > 90 days"
"""

DSL = """\
station 8IDI

rule broken
  protect files where file.size >

rule nowhere
  replicate files where file.size > 1 GB copies 2 on voyagr, hpc
"""


def located(path: Path) -> list[tuple[str, int, int, str]]:
    result = check_site([path])
    return [
        (Path(d.span.file).name, d.span.line, d.span.col, d.code)
        for d in result.diagnostics
        if d.span is not None and d.severity == "error"
    ]


def test_every_rule_that_parsed_is_checked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site_with_rules(tmp_path / "site", {"1id.yaml": YAML, "8idi.policy": DSL})
    monkeypatch.chdir(tmp_path)
    assert located(Path("site")) == [
        ("1id.yaml", 8, 7, "unknown-key"),
        ("1id.yaml", 11, 15, "type-mismatch"),
        ("8idi.policy", 6, 1, "unexpected-token"),
        ("8idi.policy", 7, 54, "unknown-location"),
    ]


def test_the_partial_trees_hold_the_clean_rules_only() -> None:
    tree, problems = parse_yaml_rules_partial(YAML, "r.yaml")
    assert [r.name.value for r in tree.rules] == ["typo"]
    assert tree.station is not None and tree.station.value == "1ID"
    assert [d.code for d in problems] == ["unknown-key"]
    tree, problems = parse_policy_partial(DSL, "r.policy")
    assert [r.name.value for r in tree.rules] == ["nowhere"]
    assert tree.station is not None and tree.station.value == "8IDI"
    assert [d.code for d in problems] == ["unexpected-token"]


def test_the_complete_file_parsers_still_refuse_a_file_with_an_error() -> None:
    assert parse_yaml_rules(YAML, "r.yaml")[0] is None
    assert parse_policy(DSL, "r.policy")[0] is None


def test_convert_refuses_a_file_with_one_bad_rule(tmp_path: Path) -> None:
    for name, text, to in [("r.yaml", YAML, "dsl"), ("r.policy", DSL, "yaml")]:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        converted, diagnostics = convert_file(path, to)
        assert converted is None and diagnostics


def test_a_file_that_is_not_rules_gives_an_empty_tree() -> None:
    tree, problems = parse_yaml_rules_partial("- just\n- a list\n", "r.yaml")
    assert tree.rules == () and problems
    tree, problems = parse_yaml_rules_partial("a: [", "r.yaml")
    assert tree.rules == () and problems
    tree, problems = parse_policy_partial("rule", "r.policy")
    assert tree.rules == () and problems
