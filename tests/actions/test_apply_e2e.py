"""`plan --out` then `apply PLAN` through the CLI on a real site (SQLite and PostgreSQL):
files placed at their layout paths, archived to tape, released from the DAQ disk, with
their bytes, mtime and mode; then nothing left to plan, and a ledger that verifies
until a row of it is altered with SQL."""

from __future__ import annotations

import random
import stat
from pathlib import Path

import orjson
import pytest
from sqlalchemy import text

from tests.actions.sitekit import (
    AT,
    NEW,
    OLD,
    Site,
    SiteFile,
    catalog_replicas,
    cli,
    done_events,
    expected_storage,
    ledger_events,
    make_site,
    storage_files,
    temp_leftovers,
    verified_mismatches,
)

FILES = [
    SiteFile(OLD, "scan0001/frame.h5", random.Random(1).randbytes(3000), mode=0o640),
    # Over the 4 MiB chunk of a copy, so hashing and writing take several rounds.
    SiteFile(OLD, "scan0001/big.h5", random.Random(2).randbytes(9_000_001), mode=0o600),
    SiteFile(OLD, "scan 2/é frame.h5", random.Random(3).randbytes(1234), mode=0o755),
    SiteFile(OLD, "raw/empty.dat", b"", mode=0o444),
    SiteFile(OLD, "raw/notes.dat", random.Random(4).randbytes(2000), mode=0o664),
    SiteFile(NEW, "scan0001/frame.h5", random.Random(5).randbytes(4000), mode=0o644),
    SiteFile(NEW, "raw/live.dat", random.Random(6).randbytes(500), mode=0o640),
]


@pytest.fixture
def site(tmp_path: Path, catalog_url: str) -> Site:
    site = make_site(tmp_path / "site", catalog_url)
    site.write(FILES)
    return site


def test_plan_then_apply_places_archives_and_releases(site: Site) -> None:
    plan_file = site.plan()
    plan = orjson.loads(plan_file.read_bytes())
    kinds = [a["kind"] for a in plan["actions"]]
    # Old h5: disk and tape; old dat: tape; new h5: disk. Every old file leaves daq.
    assert (kinds.count("copy"), kinds.count("verify"), kinds.count("delete")) == (9, 9, 5)

    result = site.apply(plan_file)
    assert result.exit_code == 0, result.output
    assert "23 done, 0 suspended, 0 refused, 0 waiting" in result.output

    assert storage_files(site) == expected_storage(site)
    by_layout = {f.layout_path: f for f in FILES}
    copies = [(loc, path) for loc, path in expected_storage(site) if loc != "daq"]
    assert len(copies) == 9
    for location, path in copies:
        f, info = by_layout[path], (site.storage(location) / path).stat()
        assert stat.S_IMODE(info.st_mode) == f.mode, (location, path)
        assert info.st_mtime_ns == f.mtime_ns, (location, path)
    for f in FILES:
        assert (site.storage("daq") / f.daq_path).exists() == (f.experiment is NEW), f.path

    engine = site.engine()
    reps = catalog_replicas(engine)
    want = {(loc, path) for loc, path in expected_storage(site)}
    assert {(k[2], r["path"]) for k, r in reps.items()} == want
    for (_, _, location), rep in reps.items():
        copied = location != "daq"
        assert rep["state"] == ("verified" if copied or rep["path"].endswith(".h5") else "present")
        if copied:
            assert rep["checksum"] == rep["md5"]
    assert verified_mismatches(site, engine) == {}
    assert temp_leftovers(site) == []
    assert set(done_events(engine).values()) == {1}
    assert len(done_events(engine)) == len(plan["actions"])

    again = cli("plan", "-c", site.config, "--at", AT, "--detailed-exitcode")
    assert again.exit_code == 0, again.output
    assert "No changes." in again.output
    site.close()


def test_ledger_verify_names_the_altered_event(site: Site) -> None:
    assert site.apply(site.plan()).exit_code == 0
    ok = cli("ledger", "verify", "-c", site.config)
    assert ok.exit_code == 0, ok.output
    events = ledger_events(site.engine())
    assert f"ledger ok: {len(events)} events, last hash {events[-1]['hash']}" in ok.output

    done = next(e for e in events if e["event"] == "done" and e["seq"] > 3)
    k = done["seq"]
    forged = done["record"].replace('"event":"done"', '"event":"suspended"')
    assert forged != done["record"]
    # Each column of one event, changed with SQL (then put back): verify names event k.
    tampers = [
        ("record", forged, "event text altered"),
        ("event", "refused", "column event altered"),
        ("at", done["at"] + 1.0, "column at altered"),
        ("actor", "someone", "column actor altered"),
        ("plan_id", "p-forged", "column plan_id altered"),
        ("action_id", "a999", "column action_id altered"),
        ("payload", '{"note": "forged"}', "column payload altered"),
        ("prev_hash", "0" * 64, "link to the previous event broken"),
        ("hash", "0" * 64, "event text altered"),
        ("seq", 10**9, "event missing"),
    ]
    engine = site.engine()
    for column, value, reason in tampers:
        with engine.begin() as conn:
            conn.execute(
                text(f"UPDATE audit_events SET {column} = :v WHERE seq = :s"), {"v": value, "s": k}
            )
        broken = cli("ledger", "verify", "-c", site.config)
        assert broken.exit_code == 1, (column, broken.output)
        assert (
            f"ledger broken at event {k}: {reason} ({k - 1} events before it verify)"
            in broken.output
        )
        where = 10**9 if column == "seq" else k
        with engine.begin() as conn:
            conn.execute(
                text(f"UPDATE audit_events SET {column} = :v WHERE seq = :s"),
                {"v": done[column], "s": where},
            )
        assert cli("ledger", "verify", "-c", site.config).exit_code == 0, column
    site.close()
