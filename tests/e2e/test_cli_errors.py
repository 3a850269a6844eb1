"""Mistakes a user makes on the command line get a one-line answer and exit 1."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from sqlalchemy import create_engine, text

POLICYD = [sys.executable, "-m", "policyd"]


def run(*args: str | Path, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("POLICYD_")}
    full.update(env)
    return subprocess.run(
        [*POLICYD, *map(str, args)], capture_output=True, text=True, cwd=cwd, env=full, timeout=120
    )


def site(tmp_path: Path) -> Path:
    result = run("init", tmp_path / "site")
    assert result.returncode == 0, result.stderr
    return tmp_path / "site"


def test_usage_mistakes_exit_1_with_clicks_message(tmp_path: Path) -> None:
    result = run("catalog", "import", cwd=tmp_path)
    assert result.returncode == 1
    assert "Missing argument '{jsonl|csv|dm-listing|mongo|scan}'" in result.stderr


def test_config_may_be_given_before_the_command(tmp_path: Path) -> None:
    root = site(tmp_path)
    result = run("-c", root / "policyd.yaml", "catalog", "stats", "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["nFiles"] == 0


def test_options_a_kind_does_not_take_are_refused(tmp_path: Path) -> None:
    root = site(tmp_path)
    (root / "f.csv").write_text("experimentName,experimentFilePath,fileSize\n")
    cases = [
        (["csv", "f.csv", "--experiment", "X"], "csv does not take --experiment"),
        (["jsonl", "f.csv", "--under", "x"], "jsonl does not take --under"),
        (
            ["csv", "f.csv", "--path-prefix", "p"],
            "--path-prefix says where on --location: give --location too",
        ),
        (["scan", "voyager", "--location", "tape"], "scan does not take --location"),
    ]
    for args, message in cases:
        result = run("catalog", "import", *args, cwd=root)
        assert result.returncode == 1, args
        assert message in result.stderr, (args, result.stderr)


def test_stats_does_not_create_a_catalog_for_a_mistyped_path(tmp_path: Path) -> None:
    root = site(tmp_path)
    result = run("catalog", "stats", cwd=root, POLICYD_CATALOG=f"sqlite:///{tmp_path}/typo.db")
    assert result.returncode == 1
    assert f"there is no catalog at {tmp_path}/typo.db" in result.stderr
    assert not (tmp_path / "typo.db").exists()


def test_plain_postgresql_url_uses_psycopg2(tmp_path: Path, pg_database: str) -> None:
    root = site(tmp_path)
    plain = pg_database.replace("postgresql+psycopg2://", "postgresql://")
    result = run("catalog", "stats", "--format", "json", cwd=root, POLICYD_CATALOG=plain)
    assert result.returncode == 0, result.stderr
    other = run("catalog", "stats", cwd=root, POLICYD_CATALOG="mysql://u@h/db")
    assert (
        other.returncode == 1
        and "policyd keeps its catalog in SQLite or PostgreSQL" in other.stderr
    )


def test_a_catalog_from_a_newer_policyd_is_refused(tmp_path: Path) -> None:
    root = site(tmp_path)
    engine = create_engine(f"sqlite:///{root / 'catalog.db'}")
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    engine.dispose()
    result = run("catalog", "stats", cwd=root)
    assert result.returncode == 1
    assert "schema revision 0099" in result.stderr and "written by a newer policyd" in result.stderr


def test_unreachable_mongo_is_named(tmp_path: Path) -> None:
    root = site(tmp_path)
    result = run("catalog", "import", "mongo", "mongodb://user:secret@127.0.0.1:1/dm", cwd=root)
    assert result.returncode == 1
    assert "cannot reach MongoDB at mongodb://127.0.0.1:1/dm" in result.stderr
    assert "secret" not in result.stderr


def test_demo_and_init_keep_their_own_catalog_whatever_the_environment(tmp_path: Path) -> None:
    elsewhere = tmp_path / "production.db"
    demo = run(
        "demo", "--dir", tmp_path / "d", "--files", "3", POLICYD_CATALOG=f"sqlite:///{elsewhere}"
    )
    assert demo.returncode == 0, demo.stderr
    assert not elsewhere.exists()
    assert (tmp_path / "d" / "catalog.db").is_file()
    init = run("init", tmp_path / "i", POLICYD_CATALOG=f"sqlite:///{elsewhere}")
    assert init.returncode == 0, init.stderr
    assert not elsewhere.exists() and (tmp_path / "i" / "catalog.db").is_file()


def test_init_into_a_file_and_demo_into_a_file(tmp_path: Path) -> None:
    target = tmp_path / "f.txt"
    target.write_text("x")
    init = run("init", target)
    assert init.returncode == 1 and "is a file: give init a folder" in init.stderr
    demo = run("demo", "--dir", target)
    assert demo.returncode == 1 and "is not an empty folder" in demo.stderr
    zero = run("demo", "--experiments", "0")
    assert zero.returncode == 1 and "0 is not in the range 1<=x<=1000" in zero.stderr
