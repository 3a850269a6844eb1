"""Faults `apply` meets on real storage, and the limits it enforces before it starts.

Each fault is made for real: a DAQ file removed or rewritten after it was cataloged,
a target folder on a 2 MiB tmpfs, the copy a delete relies on removed from tape, a
second process holding the catalog lock. The site retries twice, 0.05 s apart, so
the retries are quick; what the ledger says is read back from `audit_events`.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, select

from policyd.actions.apply import catalog_lock
from policyd.catalog.schema import experiments, files
from tests.actions.sitekit import (
    AT,
    NEW,
    OLD,
    RULES,
    Site,
    SiteFile,
    action_states,
    catalog_replicas,
    cli,
    ledger_events,
    make_site,
    mounted,
    storage_files,
    temp_leftovers,
    verified_mismatches,
)

EXPIRE = """
rule scratch
  expire files where file.path like "scratch/**"
"""

PLACE_ONLY = """\
rule layout
  place files where file.ext == "h5"
  on disk
  at "{station}/{experiment.start:%Y-%m}/{experiment.name}/{file.path}"
"""


def data(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


@pytest.fixture
def sqlite_site(tmp_path: Path) -> Iterator[Site]:
    site = make_site(tmp_path / "site", f"sqlite:///{tmp_path / 'site' / 'catalog.db'}")
    yield site
    site.close()


def events_of(site: Site, action: str) -> list[tuple[str, dict[str, object]]]:
    """(event, payload) of one action, in ledger order."""
    return [
        (e["event"], orjson.loads(e["record"])["payload"])
        for e in ledger_events(site.engine())
        if e["action_id"] == action
    ]


def action_ids(plan: Path, kind: str, file: str) -> list[str]:
    return [
        a["id"]
        for a in orjson.loads(plan.read_bytes())["actions"]
        if a["kind"] == kind and a["file"] == file
    ]


def test_source_missing_on_storage_is_suspended_and_recorded_nowhere(sqlite_site: Site) -> None:
    """The catalog has the DAQ replica, the file is gone. docs/operations.md: a missing
    source is not retried (waiting does not bring it back); the copies are suspended
    with the path in the ledger, what waits for them is not run."""
    site = sqlite_site
    gone, kept = site.write(
        [SiteFile(OLD, "scan1/gone.h5", data(1, 900)), SiteFile(OLD, "scan1/kept.h5", data(2, 800))]
    )
    (site.storage("daq") / gone.daq_path).unlink()
    plan = site.plan()

    result = site.apply(plan)
    assert result.exit_code == 1
    assert "2 suspended" in result.output
    copies = action_ids(plan, "copy", gone.path)
    assert len(copies) == 2
    for copy in copies:
        history = events_of(site, copy)
        assert [e for e, _ in history] == ["running", "suspended"]
        last = history[-1][1]
        assert last["error"] == f"{site.storage('daq') / gone.daq_path} does not exist"
        assert (last["file"], last["attempt"]) == (gone.path, 1)
        assert last["rule"] in ("layout", "archive-old")
    delete = action_ids(plan, "delete", gone.path)[0]
    assert events_of(site, delete) == []
    reps = catalog_replicas(site.engine())
    assert reps[(OLD.name, gone.path, "daq")]["state"] == "present"
    assert {k[2] for k in reps if k[1] == gone.path} == {"daq"}
    assert (site.storage("tape") / kept.layout_path).read_bytes() == kept.data
    assert not (site.storage("daq") / kept.daq_path).exists()
    assert temp_leftovers(site) == []

    # the next plan shows what was suspended, with its last error
    shown = cli("plan", "-c", site.config, "--at", AT, "--format", "json")
    suspended = orjson.loads(shown.stdout_bytes)["suspended"]
    assert sorted((s["kind"], s["file"], s["target"], s["attempts"]) for s in suspended) == [
        ("copy", gone.path, "disk", 1),
        ("copy", gone.path, "tape", 1),
    ]
    assert all(s["error"].endswith("does not exist") for s in suspended)
    text = cli("plan", "-c", site.config, "--at", AT).output
    assert "suspended by earlier applies (2):" in text


def test_checksum_mismatch_writes_nothing_and_marks_the_source_corrupt(sqlite_site: Site) -> None:
    """The DAQ file's bytes change after cataloging (same size, as a rewrite in place
    would): the copies read them, see the md5 differ and mark the DAQ replica corrupt.
    An old, corrupt replica already at the target path is left as it was."""
    site = sqlite_site
    victim, other = site.write(
        [SiteFile(OLD, "scan1/a.h5", data(3, 3000)), SiteFile(OLD, "scan1/b.h5", data(4, 2000))]
    )
    source = site.storage("daq") / victim.daq_path
    flipped = bytes([victim.data[0] ^ 0xFF]) + victim.data[1:]
    source.write_bytes(flipped)
    bad_on_disk = site.storage("disk") / victim.layout_path
    bad_on_disk.parent.mkdir(parents=True)
    bad_on_disk.write_bytes(b"bit rot")
    with site.engine().begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO replicas (file_id, location_id, path, state, size) "
            "SELECT f.id, l.id, ?, 'corrupt', 7 FROM files f, locations l "
            "WHERE f.path = ? AND l.name = 'disk'",
            (victim.layout_path, victim.path),
        )
    plan = site.plan()

    result = site.apply(plan)
    assert result.exit_code == 1
    assert "checksum mismatch" in result.output
    assert bad_on_disk.read_bytes() == b"bit rot"
    assert not (site.storage("tape") / victim.layout_path).exists()
    assert source.read_bytes() == flipped
    reps = catalog_replicas(site.engine())
    assert reps[(OLD.name, victim.path, "daq")]["state"] == "corrupt"
    assert reps[(OLD.name, victim.path, "disk")]["state"] == "corrupt"
    assert (OLD.name, victim.path, "tape") not in reps
    ends = [events_of(site, a)[-1] for a in action_ids(plan, "copy", victim.path)]
    assert {e for e, _ in ends} == {"suspended"}
    errors = [str(p["error"]) for _, p in ends]
    assert any(f"checksum mismatch: read {hashlib.md5(flipped).hexdigest()}" in e for e in errors)
    assert any(f"the catalog has {victim.md5}" in e for e in errors)
    assert (site.storage("disk") / other.layout_path).read_bytes() == other.data
    assert (site.storage("tape") / other.layout_path).read_bytes() == other.data
    assert verified_mismatches(site, site.engine()) == {}
    assert temp_leftovers(site) == []
    # The corrupt mark is this plan's own change: running the plan again is no stale plan.
    again = site.apply(plan)
    assert "the catalog changed" not in again.output
    assert "already done before" in again.output


@pytest.fixture
def tiny_disk(sqlite_site: Site) -> Iterator[Path]:
    """The disk location's folder is a 2 MiB tmpfs."""
    with mounted("tmpfs", sqlite_site.storage("disk"), "-o", "size=2m") as mount:
        yield mount


def test_target_full(sqlite_site: Site, tiny_disk: Path) -> None:
    """A file larger than the free space is not started; a DAQ file that grew since it
    was cataloged runs into ENOSPC while it is written. Both are retried, suspended,
    recorded nowhere, and leave no temporary file taking the space."""
    site = make_site_rules(sqlite_site, PLACE_ONLY)
    fits, too_big, grew = site.write(
        [
            SiteFile(NEW, "a/fits.h5", data(5, 300_000)),
            SiteFile(NEW, "a/too_big.h5", data(6, 3 * 2**20)),
            SiteFile(NEW, "a/grew.h5", data(7, 100_000), md5_known=False),
        ]
    )
    (site.storage("daq") / grew.daq_path).write_bytes(data(8, 3 * 2**20))
    plan = site.plan()

    result = site.apply(plan)
    assert result.exit_code == 1
    assert (tiny_disk / fits.layout_path).read_bytes() == fits.data
    for f, reason in ((too_big, "not enough free space on disk"), (grew, "no space left")):
        assert not (tiny_disk / f.layout_path).exists()
        history = events_of(site, action_ids(plan, "copy", f.path)[0])
        assert [e for e, _ in history] == ["running", "failed", "running", "suspended"], f.path
        assert all(reason in str(p["error"]) for _, p in history[1::2]), history
    reps = catalog_replicas(site.engine())
    assert {k[1] for k in reps if k[2] == "disk"} == {fits.path}
    assert temp_leftovers(site) == []
    info = os.statvfs(tiny_disk)
    assert info.f_bavail * info.f_frsize > 2 * 2**20 - 2 * len(fits.data)


def make_site_rules(site: Site, rules: str) -> Site:
    (site.root / "rules" / "site.policy").write_text(rules)
    return site


def test_delete_refused_when_the_surviving_copy_vanished(sqlite_site: Site) -> None:
    site = sqlite_site
    (f,) = site.write([SiteFile(OLD, "raw/x.dat", data(9, 1500), also_on=("tape",))])
    plan = site.plan()
    assert [a["kind"] for a in orjson.loads(plan.read_bytes())["actions"]] == ["delete"]
    (site.storage("tape") / f.layout_path).unlink()

    result = site.apply(plan)
    assert result.exit_code == 1
    assert "1 refused" in result.output
    assert (site.storage("daq") / f.daq_path).read_bytes() == f.data
    assert (OLD.name, f.path, "daq") in catalog_replicas(site.engine())
    (event, payload) = events_of(site, "a1")[-1]
    assert event == "refused"
    assert payload["error"] == (
        "min_copies: 0 other verified replicas (1 recorded but not found on storage), 1 required"
    )
    assert payload["rule"] == "archive-old"
    assert payload["file"] == f.path


@pytest.mark.parametrize(
    ("rules", "folder", "flags", "freed"),
    [(RULES, "raw", (), "4.5 KB"), (RULES + EXPIRE, "scratch", ("--allow-expire",), "9 KB")],
    ids=["release", "expire"],
)
def test_bulk_delete_needs_the_flag(
    tmp_path: Path, rules: str, folder: str, flags: tuple[str, ...], freed: str
) -> None:
    """Three 1.5 KB files, on daq and tape, over a 3 KB max_delete_per_run: released
    from daq (4.5 KB), or expired from both (9 KB): the plan counts both kinds."""
    site = make_site(
        tmp_path / "site",
        f"sqlite:///{tmp_path / 'site' / 'catalog.db'}",
        rules=rules,
        extra="safety: {min_copies: 1, max_delete_per_run: 3 KB}\n",
    )
    olds = site.write(
        [SiteFile(OLD, f"{folder}/{i}.dat", data(i, 1500), also_on=("tape",)) for i in range(3)]
    )
    plan = site.plan()
    assert orjson.loads(plan.read_bytes())["summary"]["over_max_delete"] is True
    before = storage_files(site)

    refused = site.apply(plan, *flags)
    assert refused.exit_code == 1
    assert f"the plan deletes {freed}, more than safety.max_delete_per_run (3 KB)" in refused.output
    assert "--allow-bulk-delete" in refused.output
    assert storage_files(site) == before
    assert ledger_events(site.engine()) == []

    allowed = site.apply(plan, *flags, "--allow-bulk-delete")
    assert allowed.exit_code == 0, allowed.output
    assert not any((site.storage("daq") / f.daq_path).exists() for f in olds)
    site.close()


def test_expire_needs_the_flag(sqlite_site: Site) -> None:
    site = make_site_rules(sqlite_site, RULES + EXPIRE)
    doomed, kept = site.write(
        [
            SiteFile(OLD, "scratch/tmp.dat", data(10, 700), also_on=("tape",)),
            SiteFile(NEW, "raw/keep.dat", data(11, 700)),
        ]
    )
    plan = site.plan()
    before = storage_files(site)

    refused = site.apply(plan)
    assert refused.exit_code == 1
    assert "--allow-expire" in refused.output
    assert storage_files(site) == before
    assert ledger_events(site.engine()) == []

    allowed = site.apply(plan, "--allow-expire")
    assert allowed.exit_code == 0, allowed.output
    assert storage_files(site) == {("daq", kept.daq_path): kept.md5}
    with site.engine().connect() as conn:
        expired = dict(
            conn.execute(
                select(files.c.path, files.c.expired_at).join(
                    experiments, experiments.c.id == files.c.experiment_id
                )
            ).all()
        )
    assert expired[doomed.path] is not None
    assert expired[kept.path] is None
    assert {k[1] for k in catalog_replicas(site.engine())} == {kept.path}


def test_a_second_apply_is_refused_while_the_lock_is_held(tmp_path: Path, catalog_url: str) -> None:
    site = make_site(tmp_path / "site", catalog_url)
    site.write([SiteFile(OLD, "scan1/a.h5", data(12, 1000))])
    plan = site.plan()
    site.close()
    holder = hold_lock(catalog_url)
    try:
        refused = site.apply(plan)
        assert refused.exit_code == 1
        assert "another policyd apply or daemon is working on this catalog" in refused.output
        assert action_states(site.engine()) == {}
    finally:
        release(holder)
    assert site.apply(plan).exit_code == 0
    site.close()


def hold_lock(catalog_url: str) -> tuple[int, int]:
    """Fork a process that takes the catalog lock the way `apply` does and keeps it
    until its pipe is closed; returns once it holds it."""
    assert threading.active_count() == 1, "fork with other threads running"
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(ready_r)
            os.close(hold_w)
            with catalog_lock(create_engine(catalog_url)):
                os.write(ready_w, b"locked")
                os.read(hold_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    os.close(hold_r)
    assert os.read(ready_r, 6) == b"locked"
    os.close(ready_r)
    return pid, hold_w


def release(holder: tuple[int, int]) -> None:
    pid, hold_w = holder
    os.close(hold_w)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
