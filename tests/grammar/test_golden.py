"""Golden diagnostics: each `bad/NAME.policy` next to the exact text it must produce.

The expected text is what `policyd check` prints for the file, without the source
line and caret: a change to any message shows up here as a reviewed diff. Set
POLICYD_UPDATE_GOLDEN=1 to rewrite the `.expected` files after a deliberate change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from policyd.grammar.dsl import parse_policy

BAD = Path(__file__).with_name("bad")
CASES = sorted(BAD.glob("*.policy"))


def _rendered(path: Path) -> str:
    tree, diagnostics = parse_policy(path.read_text(encoding="utf-8"), path.name)
    assert tree is None, f"{path.name} parsed without an error"
    return "\n".join(d.render() for d in diagnostics) + "\n"


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 15


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_golden(path: Path) -> None:
    expected_path = path.with_suffix(".expected")
    actual = _rendered(path)
    if os.environ.get("POLICYD_UPDATE_GOLDEN") == "1":
        expected_path.write_text(actual, encoding="utf-8")
    assert actual == expected_path.read_text(encoding="utf-8")
