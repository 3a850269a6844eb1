"""`policyd pin`, `unpin` and `restore` through the CLI on a real site and catalog."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from policyd.catalog.schema import experiments
from policyd.cli import main
from policyd.site import open_site
from tests.catalog.helpers import catalog_replicas, write_jsonl

RULES = """\
station 8IDI
rule to-tape
  archive files where age(experiment.end) > 90 days to tape then release from voyager
"""


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def site(site_dir: Path) -> Path:
    """Two files of an old experiment, archived on tape only."""
    (site_dir / "rules").mkdir()
    (site_dir / "rules" / "r.policy").write_text(RULES)
    tape = site_dir / "storage" / "tape" / "8IDI" / "Old"
    tape.mkdir(parents=True)
    records: list[dict[str, object]] = [
        {
            "record": "experiment",
            "name": "Old",
            "station": "8IDI",
            "startDate": "2020-01-01T00:00:00Z",
            "endDate": "2020-02-01T00:00:00Z",
        }
    ]
    for name in ("a.h5", "b.h5"):
        data = os.urandom(5000)
        (tape / name).write_bytes(data)
        records.append(
            {
                "record": "file",
                "experimentName": "Old",
                "experimentFilePath": name,
                "fileSize": len(data),
                "md5Sum": hashlib.md5(data).hexdigest(),
                "replicas": [{"location": "tape", "path": f"8IDI/Old/{name}", "verified": True}],
            }
        )
    source = write_jsonl(site_dir / "c.jsonl", records)
    assert cli("catalog", "import", "jsonl", source).exit_code == 0
    return site_dir


def test_restore_copies_back_and_pin_holds_them(site: Path) -> None:
    result = cli("restore", "Old", "--to", "voyager")
    assert result.exit_code == 0, result.output
    assert "restored 2 files" in result.output
    for name in ("a.h5", "b.h5"):
        restored = site / "storage" / "voyager" / "8IDI" / "Old" / name
        original = site / "storage" / "tape" / "8IDI" / "Old" / name
        assert restored.read_bytes() == original.read_bytes()
    engine = open_site(site / "policyd.yaml").engine
    states = {k[1:]: v["state"] for k, v in catalog_replicas(engine).items()}
    assert states[("a.h5", "voyager")] == "verified"

    # the archive rule would release the restored copies; a pin holds them
    plan = cli("plan", "--format", "json")
    kinds = [a["kind"] for a in orjson.loads(plan.stdout_bytes)["actions"]]
    assert kinds == ["delete", "delete"]
    assert cli("pin", "Old", "--days", "3").exit_code == 0
    held = orjson.loads(cli("plan", "--format", "json").stdout_bytes)
    assert held["actions"] == []
    assert {b["reason"].split(" until")[0] for b in held["blocked"]} == {"experiment pinned"}
    assert cli("unpin", "Old").exit_code == 0
    with engine.connect() as conn:
        assert conn.execute(select(experiments.c.pinned_until)).scalar() is None
    again = orjson.loads(cli("plan", "--format", "json").stdout_bytes)
    assert [a["kind"] for a in again["actions"]] == ["delete", "delete"]
    verified = cli("ledger", "verify")
    assert verified.exit_code == 0, verified.output


def test_unknown_experiment_is_named(site: Path) -> None:
    result = cli("pin", "Olf", "--days", "1")
    assert result.exit_code == 1
    assert "no experiment 'Olf' in the catalog; did you mean Old?" in result.output
    assert cli("restore", "Nope").exit_code == 1
    bad = cli("restore", "Old", "--to", "moon")
    assert bad.exit_code == 1
    assert "--to moon: no such location" in bad.output
