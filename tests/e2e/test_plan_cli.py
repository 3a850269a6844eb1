"""`policyd plan`, `policyd explain` and `policyd schema plan` through the CLI, on a
real site folder and catalog (SQLite and PostgreSQL)."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from policyd.cli import main
from policyd.planner.schema import PlanFile
from tests.conftest import truncate_pg
from tests.planner.harness import build_site

AT = "2026-11-24T08:00:00Z"

CASE = {
    "rules": """\
station 8IDI
rule layout
  place files where file.ext == "h5" on voyager at "{station}/{experiment.name}/{file.path}"
rule scratch
  release files where file.path like "scratch/**" from daq-8idi
""",
    "experiments": [{"name": "E1"}],
    "files": [
        {"path": "scan1/a.h5", "replicas": {"daq-8idi": "verified"}},
        {"path": "scratch/x.dat", "replicas": {"daq-8idi": "verified", "tape": "verified"}},
    ],
}

SETTLED = {
    **CASE,
    "files": [{"path": "scan1/a.h5", "replicas": {"daq-8idi": "verified", "voyager": "verified"}}],
}


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def site(tmp_path: Path, catalog_url: str) -> Path:
    _, engine = build_site(CASE, tmp_path, catalog_url)
    engine.dispose()
    (tmp_path / "policyd.yaml").write_text(
        (tmp_path / "policyd.yaml").read_text().replace("sqlite:///catalog.db", catalog_url)
    )
    return tmp_path / "policyd.yaml"


def test_plan_text_groups_by_rule(site: Path) -> None:
    result = cli("plan", "-c", site, "--at", AT)
    assert result.exit_code == 0, result.output
    assert "8IDI/layout: 1 copy (100 B), 1 verify" in result.output
    assert "+ copy     E1:scan1/a.h5  daq-8idi -> voyager:8IDI/E1/scan1/a.h5" in result.output
    assert "- delete   E1:scratch/x.dat  from daq-8idi" in result.output
    assert "Plan: 1 to copy (100 B), 1 to verify, 1 to delete" in result.output


def test_plan_json_is_byte_identical_and_valid(site: Path, tmp_path: Path) -> None:
    first = cli("plan", "-c", site, "--at", AT, "--format", "json")
    second = cli("plan", "-c", site, "--at", AT, "--format", "json", "--out", tmp_path / "p.json")
    assert first.exit_code == second.exit_code == 0
    assert first.stdout_bytes == second.stdout_bytes == (tmp_path / "p.json").read_bytes()
    plan = PlanFile.model_validate(orjson.loads(first.stdout_bytes))
    assert [a.kind for a in plan.actions] == ["copy", "verify", "delete"]
    assert plan.actions[1].after == ["a1"]
    assert plan.now == AT
    assert plan.summary.bytes_to_copy == 100


def test_detailed_exitcode(site: Path, tmp_path: Path, catalog_url: str) -> None:
    assert cli("plan", "-c", site, "--at", AT, "--detailed-exitcode").exit_code == 2
    settled = tmp_path / "settled"
    settled.mkdir()
    if catalog_url.startswith("sqlite"):
        catalog_url = f"sqlite:///{settled / 'catalog.db'}"
    else:
        truncate_pg(catalog_url)
    _, engine = build_site(SETTLED, settled, catalog_url)
    engine.dispose()
    config = settled / "policyd.yaml"
    config.write_text(config.read_text().replace("sqlite:///catalog.db", catalog_url))
    result = cli("plan", "-c", config, "--at", AT, "--detailed-exitcode")
    assert result.exit_code == 0, result.output
    assert "No changes." in result.output


def test_rule_selection(site: Path) -> None:
    result = cli("plan", "-c", site, "--at", AT, "--rule", "scratch", "--format", "json")
    assert result.exit_code == 0
    kinds = [a["kind"] for a in orjson.loads(result.stdout_bytes)["actions"]]
    assert kinds == ["delete"]
    missing = cli("plan", "-c", site, "--at", AT, "--rule", "scratsh")
    assert missing.exit_code == 1
    assert "no rule named 'scratsh'" in missing.output


def test_bad_at_is_a_clear_error(site: Path) -> None:
    result = cli("plan", "-c", site, "--at", "yesterday")
    assert result.exit_code == 1
    assert "--at 'yesterday' is not a time" in result.output


def test_plan_refuses_rules_with_errors(site: Path) -> None:
    rules = site.parent / "rules" / "rules.policy"
    rules.write_text("rule bad\n  release files where file.size > 90 days from daq-8idi\n")
    result = cli("plan", "-c", site, "--at", AT)
    assert result.exit_code == 1
    assert f"{rules}:2:23: error: cannot compare size with duration" in result.output


def test_explain_shows_values_locks_and_actions(site: Path) -> None:
    result = cli("explain", "-c", site, "--at", AT, "E1:scan1/a.h5")
    assert result.exit_code == 0, result.output
    assert "rule 8IDI/layout (place): matches  [database]" in result.output
    assert 'file.ext == "h5" = true' in result.output
    assert "rule 8IDI/scratch (release): does not match" in result.output
    assert 'file.path like "scratch/**" = false' in result.output
    assert "voyager: wanted by 8IDI/layout" in result.output
    assert "a1 copy (8IDI/layout) daq-8idi -> voyager" in result.output


def test_explain_unknown_file(site: Path) -> None:
    result = cli("explain", "-c", site, "E1:nope.h5")
    assert result.exit_code == 1
    assert "no file E1:nope.h5 in the catalog" in result.output
    assert cli("explain", "-c", site, "no-colon").exit_code == 1


def test_schema_plan() -> None:
    result = cli("schema", "plan")
    assert result.exit_code == 0
    schema = orjson.loads(result.stdout_bytes)
    assert schema["title"] == "policyd plan file"
    assert "actions" in schema["properties"]
