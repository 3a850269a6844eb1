"""Golden diagnostics: each `bad/NAME.policy` or `bad/NAME.yaml` next to the exact text
it must produce.

The expected text is what `policyd check` prints for the file, without the source
line and caret: a change to any message shows up here as a reviewed diff. A `.policy`
file goes through the DSL front end, a `.yaml` file through the YAML one. Set
POLICYD_UPDATE_GOLDEN=1 to rewrite the `.expected` files after a deliberate change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from policyd.grammar.dsl import parse_policy
from policyd.grammar.yaml_rules import parse_yaml_rules

BAD = Path(__file__).with_name("bad")
CASES = sorted([*BAD.glob("*.policy"), *BAD.glob("*.yaml")])


def _rendered(path: Path) -> str:
    parse = parse_policy if path.suffix == ".policy" else parse_yaml_rules
    tree, diagnostics = parse(path.read_text(encoding="utf-8"), path.name)
    assert tree is None, f"{path.name} parsed without an error"
    return "\n".join(d.render() for d in diagnostics) + "\n"


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 40
    assert len([p for p in CASES if p.suffix == ".yaml"]) >= 10


def test_every_case_has_its_expected_text() -> None:
    if os.environ.get("POLICYD_UPDATE_GOLDEN") == "1":
        return  # the .expected files are being written
    expected = {p.stem for p in BAD.glob("*.expected")}
    assert expected == {p.stem for p in CASES}


@pytest.mark.parametrize("path", CASES, ids=[p.name for p in CASES])
def test_golden(path: Path) -> None:
    expected_path = path.with_suffix(".expected")
    actual = _rendered(path)
    if os.environ.get("POLICYD_UPDATE_GOLDEN") == "1":
        expected_path.write_text(actual, encoding="utf-8")
    assert actual == expected_path.read_text(encoding="utf-8")
