"""Golden checker diagnostics: each `bad/NAME.policy` or `bad/NAME.yaml`, checked by
`check_site` against the one small site of `bad/site/`, next to the exact text
`policyd check` prints for it (messages, source lines, carets, hints, the summary).

A change to any message is a reviewed diff. Set POLICYD_UPDATE_GOLDEN=1 to rewrite the
`.expected` files after a deliberate change.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from policyd.rules.check import check_site, render_check

BAD = Path(__file__).with_name("bad")
CASES = sorted([*BAD.glob("*.policy"), *BAD.glob("*.yaml")])


def _rendered(path: Path) -> str:
    # Relative paths, so that the text does not depend on where the repository is.
    result = check_site(["site", path.name])
    assert result.diagnostics, f"{path.name} checked without a diagnostic"
    return render_check(result) + "\n"


def test_the_site_alone_is_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BAD)
    result = check_site(["site"])
    assert result.diagnostics == []


def test_there_are_enough_cases() -> None:
    assert len(CASES) >= 10
    if os.environ.get("POLICYD_UPDATE_GOLDEN") == "1":
        return  # the .expected files are being written
    expected = {p.stem for p in BAD.glob("*.expected")}
    assert expected == {p.stem for p in CASES}


@pytest.mark.parametrize("path", CASES, ids=[p.name for p in CASES])
def test_golden(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(BAD)
    expected_path = path.with_suffix(".expected")
    actual = _rendered(path)
    if os.environ.get("POLICYD_UPDATE_GOLDEN") == "1":
        expected_path.write_text(actual, encoding="utf-8")
    assert actual == expected_path.read_text(encoding="utf-8")
