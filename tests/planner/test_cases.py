"""Every planner case table, on SQLite and PostgreSQL; see harness.py for the format."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.planner.harness import CASES, load_case, outcome, plan_case

CASE_FILES = sorted(CASES.glob("*.yaml"))


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_case(path: Path, tmp_path: Path, catalog_url: str) -> None:
    case = load_case(path)
    result = plan_case(case, tmp_path, catalog_url)
    if "want_check_errors" in case:
        assert result == sorted(case["want_check_errors"])
        return
    assert not isinstance(result, list), f"check refused the rules: {result}"
    got = outcome(result)
    want = case["want"]
    for key in ("actions", "blocked", "errors", "alarms", "notices"):
        assert got[key] == list(want.get(key, [])), key


def test_there_are_enough_cases() -> None:
    assert len(CASE_FILES) >= 60
