"""`sftp://` locations against a real OpenSSH server on 127.0.0.1 (tests/sshd.py).

The server runs on this machine and serves its whole file system, so what arrived
"on the server" is checked with plain file operations on the location's root, not
through policyd: a wrong answer from policyd cannot also make the check pass.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from policyd.actions import sftp as sftp_module
from policyd.actions.apply import apply_plan, load_plan
from policyd.actions.base import ActionFailed, Step
from policyd.actions.context import ApplyOptions
from policyd.actions.sftp import SftpStore
from policyd.audit.ledger import events
from policyd.catalog.schema import locations, replicas
from policyd.cli import main
from policyd.planner.run import site_rules
from policyd.site import open_site
from tests.sshd import SshServer, free_port, write_key

pytestmark = pytest.mark.sshd

SITE = """\
site: t
timezone: UTC
catalog: sqlite:///catalog.db
locations:
  daq-8idi: {{url: "file:storage/daq", tier: daq, site: beamline, capacity: 1 GB}}
  voyager: {{url: "file:storage/voyager", tier: disk, site: central, capacity: 10 GB}}
  hpc: {{url: "sftp://{user}@127.0.0.1:{port}{root}", tier: hpc, site: alcf,
         capacity: 10 GB, ssh_key: {key}}}
retry: {{attempts: 3, backoff: 0.2 s, max_backoff: 0.4 s}}
rules: ["rules/*.policy"]
"""

RULES = """\
station 8IDI
rule out
  archive files where experiment.name == "Local" to hpc
rule back
  archive files where experiment.name == "Remote" to voyager
"""


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def chunks(data: bytes, size: int = 1 << 20) -> Iterator[bytes]:
    return iter([data[i : i + size] for i in range(0, len(data), size)])


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    server = SshServer(tmp_path_factory.mktemp("sshd"))
    server.start()
    yield server
    server.stop()


def trust(home: Path, *lines: str) -> None:
    (home / ".ssh").mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "known_hosts").write_text("".join(lines))


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of the test's own: its ~/.ssh/known_hosts is the only one policyd reads."""
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    return folder


@pytest.fixture
def server_root(tmp_path: Path) -> Path:
    root = tmp_path / "server" / "hpc"
    root.mkdir(parents=True)
    return root


@pytest.fixture
def remote(sshd: SshServer, home: Path, server_root: Path) -> Iterator[SftpStore]:
    trust(home, sshd.known_hosts_line())
    store = SftpStore(
        "hpc", f"sftp://{sshd.user}@127.0.0.1:{sshd.port}{server_root}", sshd.client_key
    )
    yield store
    store.close()


# ---- the store


def test_write_streams_hashes_renames_and_keeps_mode_and_mtime(
    remote: SftpStore, server_root: Path
) -> None:
    data = os.urandom(3 * (1 << 20) + 12345)
    mtime_ns = 1_700_000_000_000_000_000
    written = remote.write(
        "8IDI/Exp/scan_1/a.h5",
        chunks(data),
        "p1-a1",
        expected_size=len(data),
        mtime_ns=mtime_ns,
        mode=0o100640,
    )
    assert written.md5 == md5(data) and written.size == len(data)
    target = server_root / "8IDI/Exp/scan_1/a.h5"
    assert target.read_bytes() == data
    info = target.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640 and info.st_mtime_ns == mtime_ns
    assert os.listdir(target.parent) == ["a.h5"]  # no temporary file left

    assert remote.checksum("8IDI/Exp/scan_1/a.h5") == written
    assert b"".join(remote.read_chunks("8IDI/Exp/scan_1/a.h5")) == data
    seen = remote.stat("8IDI/Exp/scan_1/a.h5")
    assert (seen.st_size, seen.st_mtime_ns, stat.S_IMODE(seen.st_mode)) == (
        len(data),
        mtime_ns,
        0o640,
    )
    assert remote.size("8IDI/Exp/scan_1/a.h5") == len(data)
    assert remote.exists("8IDI/Exp/scan_1/a.h5") and remote.lexists("8IDI/Exp/scan_1/a.h5")
    assert not remote.exists("8IDI/Exp/scan_1") and not remote.lexists("8IDI/nope/x")
    assert remote.size("8IDI/nope/x") is None
    with pytest.raises(FileNotFoundError):
        remote.stat("8IDI/nope/x")
    vfs = os.statvfs(server_root)
    free = remote.free_bytes()
    assert free is not None and 0 < free <= vfs.f_blocks * vfs.f_frsize

    # a second copy of the same file replaces it in one rename
    other = os.urandom(1000)
    remote.write("8IDI/Exp/scan_1/a.h5", chunks(other), "p2-a1", expected_size=1000)
    assert target.read_bytes() == other
    assert remote.remove("8IDI/Exp/scan_1/a.h5") is True
    assert remote.remove("8IDI/Exp/scan_1/a.h5") is False
    assert not target.exists()


def test_a_short_source_is_not_renamed_into_place(remote: SftpStore, server_root: Path) -> None:
    with pytest.raises(ActionFailed, match="expected 2000") as failed:
        remote.write("x/short.bin", chunks(b"z" * 1500), "p1-a2", expected_size=2000)
    assert failed.value.retryable
    assert os.listdir(server_root / "x") == []


def test_a_failing_source_leaves_nothing(remote: SftpStore, server_root: Path) -> None:
    def broken() -> Iterator[bytes]:
        yield b"a" * 5000
        raise ActionFailed("the source went away")

    with pytest.raises(ActionFailed, match="the source went away"):
        remote.write("x/broken.bin", broken(), "p1-a3", expected_size=10000)
    assert os.listdir(server_root / "x") == []


@pytest.mark.parametrize(
    "rel", ["../escape", "a/../../escape", "/etc/passwd", "a//b", "./a", "a/.", "", "a\x00b"]
)
def test_paths_that_would_leave_the_root_are_refused(
    remote: SftpStore, server_root: Path, rel: str
) -> None:
    for attempt in (
        lambda: remote.write(rel, chunks(b"x"), "p1-a4", expected_size=1),
        lambda: remote.checksum(rel),
        lambda: remote.remove(rel),
        lambda: remote.lexists(rel),
    ):
        with pytest.raises(ActionFailed) as refused:
            attempt()
        assert refused.value.refused, refused.value.message
    assert remote.size(rel) is None and not remote.exists(rel)
    assert not (server_root.parent / "escape").exists()


def test_symbolic_links_on_the_server_are_refused_not_followed(
    remote: SftpStore, server_root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.h5").write_bytes(b"not policyd's")
    (server_root / "8IDI").mkdir()
    (server_root / "8IDI" / "Linked").symlink_to(outside)
    (server_root / "8IDI" / "file.h5").symlink_to(outside / "secret.h5")

    attempts: list[Callable[[str], object]] = [
        remote.checksum,
        lambda rel: b"".join(remote.read_chunks(rel)),
        lambda rel: remote.write(rel, chunks(b"overwritten"), "p1-a5", expected_size=11),
        remote.remove,
        remote.stat,
        remote.lexists,
    ]
    for rel in ("8IDI/Linked/secret.h5", "8IDI/file.h5"):
        for attempt in attempts:
            with pytest.raises(ActionFailed, match="is a symbolic link") as refused:
                attempt(rel)
            assert refused.value.refused
        assert remote.size(rel) is None and not remote.exists(rel)
    with pytest.raises(ActionFailed, match="is a symbolic link"):
        remote.write("8IDI/Linked/new/x.h5", chunks(b"x"), "p1-a6", expected_size=1)
    assert sorted(os.listdir(outside)) == ["secret.h5"]
    assert (outside / "secret.h5").read_bytes() == b"not policyd's"
    assert (server_root / "8IDI" / "file.h5").is_symlink()


def test_a_link_planted_at_the_temporary_name_is_not_followed(
    remote: SftpStore, server_root: Path, tmp_path: Path
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    (server_root / "d").mkdir()
    (server_root / "d" / ".f.h5.p1-a7.policyd-tmp").symlink_to(victim)
    remote.write("d/f.h5", chunks(b"new bytes"), "p1-a7", expected_size=9)
    assert victim.read_bytes() == b"keep me"
    assert (server_root / "d" / "f.h5").read_bytes() == b"new bytes"
    assert os.listdir(server_root / "d") == ["f.h5"]


def test_remove_temp_removes_what_an_interrupted_copy_left(
    remote: SftpStore, server_root: Path
) -> None:
    (server_root / "d").mkdir()
    (server_root / "d" / ".f.h5.p1-a8.policyd-tmp").write_bytes(b"half")
    assert remote.remove_temp("d/f.h5", "p1-a8") is True
    assert remote.remove_temp("d/f.h5", "p1-a8") is False
    assert os.listdir(server_root / "d") == []


def test_connections_are_pooled_and_closed(remote: SftpStore, server_root: Path) -> None:
    (server_root / "f").write_bytes(b"1")
    for _ in range(5):
        assert remote.size("f") == 1
    assert len(remote._pool._idle) == 1
    remote.close()
    assert remote._pool._idle == []
    assert remote.size("f") == 1  # a later use connects again


# ---- connecting: clear errors, retried only where a retry may help


def test_an_unreachable_port_is_retryable(sshd: SshServer, home: Path, server_root: Path) -> None:
    trust(home, sshd.known_hosts_line())
    port = free_port()  # nobody listens there
    store = SftpStore("hpc", f"sftp://{sshd.user}@127.0.0.1:{port}{server_root}", sshd.client_key)
    with pytest.raises(ActionFailed, match=f"cannot connect.*port {port}") as failed:
        store.size("x")
    assert failed.value.retryable


def test_a_key_the_server_does_not_know_is_refused_for_good(
    sshd: SshServer, home: Path, server_root: Path, tmp_path: Path
) -> None:
    trust(home, sshd.known_hosts_line())
    write_key(tmp_path / "stranger")
    store = SftpStore(
        "hpc", f"sftp://{sshd.user}@127.0.0.1:{sshd.port}{server_root}", tmp_path / "stranger"
    )
    with pytest.raises(ActionFailed, match=r"login refused with ssh_key .*stranger") as failed:
        store.size("x")
    assert not failed.value.retryable
    missing = SftpStore("hpc", f"sftp://127.0.0.1:{sshd.port}/x", tmp_path / "no-such-key")
    with pytest.raises(ActionFailed, match=r"cannot use ssh_key .*no-such-key") as failed:
        missing.size("x")
    assert not failed.value.retryable


def test_an_unknown_host_key_is_refused_not_added(
    sshd: SshServer, home: Path, server_root: Path
) -> None:
    trust(home)  # an empty known_hosts
    store = SftpStore(
        "hpc", f"sftp://{sshd.user}@127.0.0.1:{sshd.port}{server_root}", sshd.client_key
    )
    with pytest.raises(ActionFailed, match=r"not in ~/.ssh/known_hosts.*ssh-keyscan -p") as failed:
        store.size("x")
    assert not failed.value.retryable
    assert (home / ".ssh" / "known_hosts").read_text() == ""


def test_a_changed_host_key_is_refused(
    sshd: SshServer, home: Path, server_root: Path, tmp_path: Path
) -> None:
    impostor = write_key(tmp_path / "impostor")
    trust(home, f"[127.0.0.1]:{sshd.port} {impostor}\n")
    store = SftpStore(
        "hpc", f"sftp://{sshd.user}@127.0.0.1:{sshd.port}{server_root}", sshd.client_key
    )
    with pytest.raises(ActionFailed, match="host key is not the one known_hosts has") as failed:
        store.size("x")
    assert not failed.value.retryable


def test_a_host_key_recorded_under_the_host_name_is_accepted(
    sshd: SshServer, home: Path, server_root: Path
) -> None:
    # what `ssh localhost` records; paramiko alone looks under the address only
    trust(home, sshd.known_hosts_line("localhost"))
    store = SftpStore(
        "hpc", f"sftp://{sshd.user}@localhost:{sshd.port}{server_root}", sshd.client_key
    )
    (server_root / "f").write_bytes(b"12")
    assert store.size("f") == 2
    store.close()


def test_urls_it_cannot_use_are_named() -> None:
    for url, message in [
        ("sftp://u:secret@h/x", "passwords in sftp URLs"),
        ("sftp://h:99999/x", "invalid port"),
        ("sftp://h", "is not sftp://"),
    ]:
        with pytest.raises(ActionFailed, match=message) as failed:
            SftpStore("hpc", url, None)
        assert not failed.value.retryable


# ---- plan -> apply


def write_site(site: Path, sshd: SshServer, server_root: Path) -> None:
    (site / "rules").mkdir(parents=True)
    (site / "rules" / "r.policy").write_text(RULES)
    (site / "policyd.yaml").write_text(
        SITE.format(user=sshd.user, port=sshd.port, root=server_root, key=sshd.client_key)
    )
    for name in ("daq", "voyager"):
        (site / "storage" / name).mkdir(parents=True)


def catalog(site: Path, records: list[dict[str, object]]) -> None:
    source = site / "catalog.jsonl"
    source.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    result = cli("catalog", "import", "jsonl", source)
    assert result.exit_code == 0, result.output


def experiment(name: str) -> dict[str, object]:
    return {
        "record": "experiment",
        "name": name,
        "station": "8IDI",
        "startDate": "2026-01-05T08:00:00Z",
        "endDate": "2026-01-09T20:00:00Z",
    }


def cataloged_file(
    folder: Path, location: str, exp: str, rel: str, data: bytes
) -> dict[str, object]:
    """Put `data` on storage under `folder` and return its catalog record."""
    path = folder / "8IDI" / exp / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return {
        "record": "file",
        "experimentName": exp,
        "experimentFilePath": rel,
        "fileSize": len(data),
        "md5Sum": md5(data),
        "replicas": [{"location": location, "path": f"8IDI/{exp}/{rel}", "verified": True}],
    }


def hpc_replicas(site: Path) -> dict[str, tuple[str, str | None]]:
    """path -> (state, checksum) of every replica the catalog has on hpc."""
    engine = open_site(site / "policyd.yaml").engine
    with engine.connect() as conn:
        rows = conn.execute(
            select(replicas.c.path, replicas.c.state, replicas.c.checksum)
            .join(locations, locations.c.id == replicas.c.location_id)
            .where(locations.c.name == "hpc")
        ).all()
    engine.dispose()
    return {r.path: (r.state, r.checksum) for r in rows}


@pytest.fixture
def site(
    tmp_path: Path, sshd: SshServer, home: Path, server_root: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    folder = tmp_path / "site"
    write_site(folder, sshd, server_root)
    trust(home, sshd.known_hosts_line())
    monkeypatch.setenv("POLICYD_CONFIG", str(folder / "policyd.yaml"))
    monkeypatch.delenv("POLICYD_CATALOG", raising=False)
    return folder


def test_plan_and_apply_copy_local_to_sftp_and_back_verified(site: Path, server_root: Path) -> None:
    local = {f"scan_{i}/img.h5": os.urandom(200_000 + i) for i in range(3)}
    remote = {"raw/a.imm": os.urandom(300_000), "raw/b.imm": b""}
    records: list[dict[str, object]] = [experiment("Local"), experiment("Remote")]
    records += [
        cataloged_file(site / "storage/daq", "daq-8idi", "Local", r, d) for r, d in local.items()
    ]
    records += [cataloged_file(server_root, "hpc", "Remote", r, d) for r, d in remote.items()]
    catalog(site, records)

    planned = cli("plan", "--out", site / "plan.json")
    assert planned.exit_code == 0, planned.output
    actions = orjson.loads((site / "plan.json").read_bytes())["actions"]
    copies = sorted((a["source"], a["target"]) for a in actions if a["kind"] == "copy")
    assert copies == [("daq-8idi", "hpc")] * 3 + [("hpc", "voyager")] * 2
    assert (
        sorted(a["target"] for a in actions if a["kind"] == "verify")
        == ["hpc"] * 3 + ["voyager"] * 2
    )
    applied = cli("apply", site / "plan.json")
    assert applied.exit_code == 0, applied.output
    assert "10 done" in applied.output

    for rel, data in local.items():
        assert (server_root / "8IDI/Local" / rel).read_bytes() == data
    for rel, data in remote.items():
        assert (site / "storage/voyager/8IDI/Remote" / rel).read_bytes() == data
    leftovers = [p for p in server_root.rglob("*") if p.name.endswith(".policyd-tmp")]
    assert leftovers == []
    # the copies to hpc carry the checksum of what was written and read back; the
    # sources on hpc were read whole and matched the catalog's md5
    expected = {f"8IDI/Local/{r}": ("verified", md5(d)) for r, d in local.items()}
    expected |= {f"8IDI/Remote/{r}": ("verified", None) for r in remote}
    assert hpc_replicas(site) == expected
    assert cli("ledger", "verify").exit_code == 0
    again = cli("plan", "--format", "json")
    assert orjson.loads(again.stdout_bytes)["actions"] == []


def test_verify_rereads_sftp_replicas(site: Path, server_root: Path) -> None:
    good, bad = os.urandom(50_000), os.urandom(60_000)
    catalog(
        site,
        [
            experiment("Remote"),
            cataloged_file(server_root, "hpc", "Remote", "good.h5", good),
            cataloged_file(server_root, "hpc", "Remote", "bad.h5", bad),
        ],
    )
    (site / "rules" / "r.policy").write_text("rule fixity\n  verify files on hpc every 1 day\n")
    (server_root / "8IDI/Remote/bad.h5").write_bytes(b"X" + bad[1:])
    planned = cli("plan", "--at", "2030-01-01T00:00:00Z", "--out", site / "plan.json")
    assert planned.exit_code == 0, planned.output
    assert cli("apply", site / "plan.json").exit_code == 0
    states = {p: s for p, (s, _) in hpc_replicas(site).items()}
    assert states == {"8IDI/Remote/good.h5": "verified", "8IDI/Remote/bad.h5": "corrupt"}


def test_a_symlink_out_of_the_root_is_refused_in_apply(
    site: Path, server_root: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    catalog(site, [experiment("Remote"), cataloged_file(outside, "hpc", "Remote", "x.h5", b"abc")])
    (server_root / "8IDI").mkdir()
    (server_root / "8IDI" / "Remote").symlink_to(outside / "8IDI" / "Remote")
    assert cli("plan", "--out", site / "plan.json").exit_code == 0
    applied = cli("apply", site / "plan.json")
    assert applied.exit_code == 1
    assert "1 refused" in applied.output
    assert "is a symbolic link; policyd does not follow links" in applied.output
    assert not (site / "storage/voyager/8IDI").exists()


def test_a_lost_server_suspends_then_a_new_plan_finishes(
    tmp_path: Path, home: Path, server_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Known, not fixed yet: now and then a copy of the second apply waits for the
    # answer to its fsync until the I/O timeout, then its retry succeeds (seen in 2 of
    # 4 runs, 120 s each). The test asserts what the retries come to; a short timeout
    # keeps such a wait from costing the suite minutes.
    monkeypatch.setattr(sftp_module, "IO_TIMEOUT", 10.0)
    server = SshServer(tmp_path / "own-sshd")
    server.start()
    try:
        folder = tmp_path / "site"
        write_site(folder, server, server_root)
        trust(home, server.known_hosts_line())
        monkeypatch.setenv("POLICYD_CONFIG", str(folder / "policyd.yaml"))
        monkeypatch.delenv("POLICYD_CATALOG", raising=False)
        data = {f"f_{i:02}.h5": os.urandom(150_000) for i in range(24)}
        records: list[dict[str, object]] = [experiment("Local")]
        records += [
            cataloged_file(folder / "storage/daq", "daq-8idi", "Local", r, d)
            for r, d in data.items()
        ]
        catalog(folder, records)
        assert cli("plan", "--out", folder / "plan.json").exit_code == 0

        copied: list[str] = []

        def progress(label: str, step: Step, _result: object) -> None:
            if label == "done" and step.kind == "copy":
                copied.append(step.id)
                if len(copied) == 3:
                    server.stop()  # sshd and every session gone, mid-run

        site = open_site(folder / "policyd.yaml")
        raw = (folder / "plan.json").read_bytes()
        report = apply_plan(
            site.config,
            site.engine,
            site_rules(site.config),
            load_plan(raw, "plan.json", site.config),
            ApplyOptions(parallel=4, yes=True),
            progress,
        )
        assert server.process is None
        suspended = report.counts["suspended"]
        assert len(copied) >= 3 and suspended >= 1 and len(copied) + suspended == 24
        assert report.counts["waiting"] == suspended  # their verifies
        with site.engine.connect() as conn:
            log = [(e.action_id, e.event) for e in events(conn) if e.action_id]
        given_up = {a for a, e in log if e == "suspended"}
        assert len(given_up) == suspended
        for action in given_up:  # each one tried 3 times (retry.attempts) first
            assert [e for a, e in log if a == action].count("failed") == 2
        # nothing is recorded that is not on the server with the right bytes
        recorded = hpc_replicas(folder)
        assert len(recorded) == len(copied)
        for path, (state, checksum) in recorded.items():
            assert state == "verified"
            assert md5((server_root / path).read_bytes()) == checksum == md5(data[Path(path).name])
        site.engine.dispose()

        server.start()
        assert cli("plan", "--out", folder / "again.json").exit_code == 0
        remaining = orjson.loads((folder / "again.json").read_bytes())["actions"]
        assert sorted(a["kind"] for a in remaining) == ["copy"] * suspended + ["verify"] * suspended
        applied = cli("apply", folder / "again.json")
        assert applied.exit_code == 0, applied.output
        final = hpc_replicas(folder)
        assert final == {f"8IDI/Local/{r}": ("verified", md5(d)) for r, d in data.items()}
        for rel, content in data.items():
            assert (server_root / "8IDI/Local" / rel).read_bytes() == content
        # besides the replicas, at most the temporary files of the copies cut off when
        # sshd died (their connection was gone, so they could not remove them)
        others = {p.name for p in (server_root / "8IDI/Local").iterdir()} - set(data)
        assert all(n.startswith(".") and n.endswith(".policyd-tmp") for n in others), others
        assert len(others) <= 4  # --parallel 4
        assert cli("ledger", "verify").exit_code == 0
    finally:
        server.stop()
