"""The installed `policyd` command as a user runs it: real processes, real folders."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import click
import pytest

from policyd import __version__
from policyd.cli import main

POLICYD = [sys.executable, "-m", "policyd"]


def run(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("POLICYD_")}
    full_env.update(env or {})
    return subprocess.run(
        [*POLICYD, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=300,
    )


def all_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = [prefix]
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            found.extend(all_commands(command, (*prefix, name)))
        else:
            found.append((*prefix, name))
    return found


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"policyd, version {__version__}"


@pytest.mark.parametrize("command", all_commands(main), ids=lambda c: " ".join(c) or "policyd")
def test_every_command_has_short_help_with_an_example(command: tuple[str, ...]) -> None:
    from click.testing import CliRunner

    result = CliRunner().invoke(main, [*command, "-h"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output
    assert "Example" in result.output


def test_init_writes_a_starter_repo_that_works(tmp_path: Path) -> None:
    target = tmp_path / "repo"
    result = run("init", target)
    assert result.returncode == 0, result.stderr
    for rel in (
        "policyd.yaml",
        "rules/8idi.policy",
        "stations/8idi.yaml",
        "workflows/checksum.yaml",
        "catalog.db",
    ):
        assert (target / rel).is_file(), rel
    assert (target / "storage" / "voyager").is_dir()
    stats = run("catalog", "stats", "--format", "json", cwd=target)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["nFiles"] == 0
    again = run("init", target)
    assert again.returncode == 1
    assert "already exist" in again.stderr and "--force" in again.stderr


def test_demo_builds_a_site_with_real_files_and_a_catalog(tmp_path: Path) -> None:
    site = tmp_path / "demo"
    result = run("demo", "--dir", site, "--experiments", "4", "--files", "60")
    assert result.returncode == 0, result.stderr
    assert f"Demo site in {site}" in " ".join(result.stdout.split())
    stats = run("catalog", "stats", "--format", "json", "-c", site / "policyd.yaml")
    assert json.loads(stats.stdout)["nFiles"] == 240
    # the demo applied its plan: every replica recorded is on disk with the file's md5,
    # nothing else is, and planning again finds nothing to do
    with sqlite3.connect(site / "catalog.db") as db:
        recorded = {
            Path(url.removeprefix("file://")) / path: md5
            for url, path, md5 in db.execute(
                "SELECT l.url, r.path, f.md5 FROM replicas r JOIN files f ON f.id = r.file_id "
                "JOIN locations l ON l.id = r.location_id WHERE r.state = 'verified'"
            )
        }
        total = db.execute("SELECT count(*) FROM replicas").fetchone()[0]
    on_disk = {p for p in (site / "storage").rglob("*") if p.is_file()}
    assert len(recorded) == total > 240
    assert on_disk == set(recorded)
    assert all(hashlib.md5(p.read_bytes()).hexdigest() == recorded[p] for p in on_disk)
    assert "a second plan: 0 actions" in result.stdout
    assert "ledger verify: ok" in result.stdout
    refused = run("demo", "--dir", site)
    assert refused.returncode == 1 and "is not an empty folder" in refused.stderr


def test_bad_config_is_a_located_message_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "policyd.yaml").write_text(
        "site: x\nlocations:\n  a: {url: 'file:a', capacity: 1.5 XB}\n"
    )
    result = run("catalog", "stats", cwd=tmp_path)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("policyd.yaml:3:32: error: locations.a.capacity: ")


def test_no_config_at_all_says_what_to_do(tmp_path: Path) -> None:
    result = run("catalog", "stats", cwd=tmp_path)
    assert result.returncode == 1
    assert "no site config" in result.stderr and "policyd init" in result.stderr


def test_unreachable_catalog_database_is_a_clear_error(tmp_path: Path) -> None:
    result = run(
        "catalog",
        "stats",
        cwd=tmp_path,
        env={"POLICYD_CATALOG": "postgresql+psycopg2://nobody@127.0.0.1:1/none"},
    )
    assert result.returncode == 1
    assert "cannot use the catalog database" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_import_on_a_terminal_shows_a_progress_bar(tmp_path: Path) -> None:
    root = tmp_path / "site"
    assert run("init", root).returncode == 0
    source = root / "big.jsonl"
    experiment = {"record": "experiment", "name": "E1", "station": "8IDI"}
    rows = [
        {"record": "file", "experimentName": "E1", "experimentFilePath": f"f{i}", "fileSize": i}
        for i in range(30000)
    ]
    source.write_text("\n".join(json.dumps(r) for r in [experiment, *rows]) + "\n")
    shown = run("catalog", "import", "jsonl", source, cwd=root, env={"TTY_COMPATIBLE": "1"})
    assert shown.returncode == 0, shown.stderr
    assert "importing big.jsonl" in shown.stderr
    quiet = run("catalog", "import", "jsonl", source, cwd=root)
    assert "importing" not in quiet.stderr


def test_schema_commands_print_json_schemas() -> None:
    rules = run("schema", "rules")
    assert rules.returncode == 0, rules.stderr
    assert json.loads(rules.stdout)["title"] == "policyd rule file"
    config = run("schema", "config")
    assert config.returncode == 0, config.stderr
    assert "locations" in json.loads(config.stdout)["properties"]


def test_check_passes_the_starter_repo_and_locates_mistakes(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    assert run("init", root).returncode == 0
    clean = run("check", cwd=root)
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 errors" in clean.stdout
    rules = root / "rules" / "8idi.policy"
    rules.write_text(rules.read_text().replace("on voyager", "on voyagr"))
    broken = run("check", root, env={"POLICYD_CATALOG": "postgresql://nobody@127.0.0.1:1/none"})
    assert broken.returncode == 1
    assert (
        f"{root}/rules/8idi.policy:6:6: error: unknown location 'voyagr'; did you mean 'voyager'?"
        in broken.stdout
    )


def test_pre_commit_hook_runs_policyd_check() -> None:
    from ruamel.yaml import YAML

    hooks = YAML(typ="safe").load(Path(__file__).parents[2] / ".pre-commit-hooks.yaml")
    assert hooks[0]["id"] == "policyd-check"
    assert hooks[0]["entry"] == "policyd check"
    assert hooks[0]["pass_filenames"] is False


def test_convert_round_trips_an_example_file(tmp_path: Path) -> None:
    source = Path(__file__).parents[2] / "examples" / "aps" / "rules" / "8idi.policy"
    yaml_file = tmp_path / "8idi.yaml"
    to_yaml = run("convert", source, "--to", "yaml", "--out", yaml_file)
    assert to_yaml.returncode == 0, to_yaml.stderr
    assert yaml_file.read_text().startswith("version: 1\nstation: 8IDI\n")
    back = run("convert", yaml_file, "--to", "dsl")
    assert back.returncode == 0, back.stderr
    assert "rule layout priority 10" in back.stdout
    broken = tmp_path / "b.policy"
    broken.write_text("rule a\n  protect files wher x\n")
    failed = run("convert", broken, "--to", "yaml")
    assert failed.returncode == 1 and "b.policy:2:17: error:" in failed.stderr
