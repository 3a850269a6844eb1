"""Every planner case table, on SQLite and PostgreSQL; see harness.py for the format."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.planner.harness import CASES, assert_wanted, load_case, plan_case

CASE_FILES = sorted(CASES.glob("*.yaml"))


@pytest.mark.parametrize("path", CASE_FILES, ids=[p.stem for p in CASE_FILES])
def test_case(path: Path, tmp_path: Path, catalog_url: str) -> None:
    case = load_case(path)
    assert_wanted(case, plan_case(case, tmp_path, catalog_url))


def test_there_are_enough_cases() -> None:
    assert len(CASE_FILES) >= 60
