"""POSIX ACL grants and revokes on real files, for real system accounts made by the test."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select, update

from policyd.catalog.schema import experiments, grants
from policyd.cli import main
from policyd.site import open_site
from tests.catalog.helpers import write_jsonl

RULES = """\
station 8IDI
rule access
  grant read, write to experiment.users on experiment directory at voyager
  while experiment.active or experiment.end > now - 30 days
  grant read to group "{group}" on experiment directory at voyager
"""


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def getfacl(path: Path) -> set[str]:
    out = subprocess.run(
        ["getfacl", "-p", "--omit-header", str(path)], capture_output=True, text=True, check=True
    )
    return {line for line in out.stdout.splitlines() if line}


@pytest.fixture
def accounts() -> Iterator[tuple[str, str]]:
    """A user and a group that exist for this test only."""
    tag = uuid.uuid4().hex[:6]
    user, group = f"pdu{tag}", f"pdg{tag}"
    subprocess.run(["groupadd", group], check=True)
    subprocess.run(
        ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", user], check=True
    )
    try:
        yield user, group
    finally:
        subprocess.run(["userdel", user], check=False)
        subprocess.run(["groupdel", group], check=False)


@pytest.fixture
def site(site_dir: Path, accounts: tuple[str, str]) -> Path:
    user, group = accounts
    (site_dir / "rules").mkdir()
    (site_dir / "rules" / "r.policy").write_text(RULES.format(group=group))
    folder = site_dir / "storage" / "voyager" / "8IDI" / "E1" / "scan1"
    folder.mkdir(parents=True)
    (folder / "a.h5").write_bytes(b"data")
    outside = site_dir / "outside.txt"
    outside.write_text("not policyd's")
    os.symlink(outside, folder / "link.txt")
    records: list[dict[str, object]] = [
        {
            "record": "experiment",
            "name": "E1",
            "station": "8IDI",
            "startDate": "2026-11-01T00:00:00Z",
            "users": [user, "nosuchuser-x"],
        },
        {
            "record": "file",
            "experimentName": "E1",
            "experimentFilePath": "scan1/a.h5",
            "fileSize": 4,
            "md5Sum": "8d777f385d3dfec8815d20f7496026dc",
            "replicas": [{"location": "voyager", "path": "8IDI/E1/scan1/a.h5", "verified": True}],
        },
    ]
    assert (
        cli("catalog", "import", "jsonl", write_jsonl(site_dir / "c.jsonl", records)).exit_code == 0
    )
    return site_dir


def test_grant_then_revoke(site: Path, accounts: tuple[str, str]) -> None:
    user, group = accounts
    plan = site / "plan.json"
    made = cli("plan", "--at", "2026-11-20T00:00:00Z", "--out", plan)
    assert made.exit_code == 0, made.output
    acl = [a for a in orjson.loads(plan.read_bytes())["actions"] if a["kind"] == "acl"]
    assert {(a["op"], a["principal"], a["path"]) for a in acl} == {
        ("grant", f"user:{user}", "8IDI/E1"),
        ("grant", "user:nosuchuser-x", "8IDI/E1"),
        ("grant", f"group:{group}", "8IDI/E1"),
    }
    applied = cli("apply", plan)
    assert applied.exit_code == 1  # the unknown account is reported, the rest done
    assert "no system account 'nosuchuser-x'" in applied.output

    directory = site / "storage" / "voyager" / "8IDI" / "E1"
    entries = getfacl(directory)
    assert f"user:{user}:rwx" in entries
    assert f"group:{group}:r-x" in entries
    assert f"default:user:{user}:rwx" in entries
    assert f"default:group:{group}:r-x" in entries
    file_entries = getfacl(directory / "scan1" / "a.h5")
    assert f"user:{user}:rw-" in file_entries
    assert f"group:{group}:r--" in file_entries
    assert not any(user in e for e in getfacl(site / "outside.txt"))

    engine = open_site(site / "policyd.yaml").engine
    with engine.connect() as conn:
        rows = {(r.principal, r.perms) for r in conn.execute(select(grants))}
    assert rows == {(f"user:{user}", "read,write"), (f"group:{group}", "read")}

    # a second plan does not grant again what is recorded
    again = orjson.loads(
        cli("plan", "--at", "2026-11-20T00:00:00Z", "--format", "json").stdout_bytes
    )
    assert [a["principal"] for a in again["actions"] if a["kind"] == "acl"] == ["user:nosuchuser-x"]

    # the experiment ended long ago: the users' grant is revoked, the group's stays
    with engine.begin() as conn:
        conn.execute(update(experiments).values(end=1_700_000_000.0))
    revoke = site / "revoke.json"
    assert cli("plan", "--at", "2026-11-20T00:00:00Z", "--out", revoke).exit_code == 0
    ops = [(a["op"], a["principal"]) for a in orjson.loads(revoke.read_bytes())["actions"]]
    assert ops == [("revoke", f"user:{user}")]
    assert cli("apply", revoke).exit_code == 0
    entries = getfacl(directory)
    assert not any(user in e for e in entries)
    assert f"group:{group}:r-x" in entries
    assert not any(user in e for e in getfacl(directory / "scan1" / "a.h5"))
    with engine.connect() as conn:
        assert {r.principal for r in conn.execute(select(grants))} == {f"group:{group}"}
    assert cli("ledger", "verify").exit_code == 0
