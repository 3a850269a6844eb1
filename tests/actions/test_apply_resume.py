"""A stale plan is refused; the same plan, re-run after an interrupted apply, resumes
(SQLite and PostgreSQL). The interruption is real: a child process running `policyd apply` (forked
from the test) killed with SIGKILL once the ledger shows some actions done."""

from __future__ import annotations

from pathlib import Path

import orjson

from policyd.actions.runner import plan_id_of
from tests.actions.sitekit import (
    OLD,
    SiteFile,
    action_states,
    cli,
    done_events,
    expected_storage,
    fork_apply,
    kill_after,
    ledger_events,
    make_site,
    sample_files,
    storage_files,
    temp_leftovers,
    verified_mismatches,
)

STALE = "the catalog changed since this plan was made"
KILL_AT = 10


def test_a_plan_made_before_an_import_is_refused(tmp_path: Path, catalog_url: str) -> None:
    site = make_site(tmp_path / "site", catalog_url)
    site.write(sample_files(4, seed=3, experiment=OLD, prefix="s"))
    plan = site.plan()
    site.write([SiteFile(OLD, "late/arrival.h5", b"new bytes" * 100)])
    result = site.apply(plan)
    assert result.exit_code == 1
    assert STALE in result.output
    assert "make a new plan (`policyd plan --out PLAN.json`)" in result.output
    engine = site.engine()
    assert ledger_events(engine) == []
    assert action_states(engine) == {}
    assert storage_files(site).keys() == {("daq", f.daq_path) for f in site.files}
    fresh = site.plan("fresh.json")
    assert site.apply(fresh).exit_code == 0
    assert storage_files(site) == expected_storage(site)
    site.close()


def test_the_same_plan_resumes_after_a_kill(tmp_path: Path, catalog_url: str) -> None:
    site = make_site(tmp_path / "site", catalog_url)
    site.write(sample_files(20, seed=7, experiment=OLD, prefix="s"))
    plan = site.plan()
    actions = orjson.loads(plan.read_bytes())["actions"]
    plan_id = plan_id_of(plan.read_bytes())
    engine = site.engine()

    child = fork_apply(site, plan)
    done_at_kill = kill_after(child, engine, KILL_AT, event="done")
    assert child.returncode == -9, "the child finished before it was killed; make the plan longer"
    assert KILL_AT <= done_at_kill < len(actions)
    before = {e["action_id"]: e["seq"] for e in ledger_events(engine, "done")}

    resumed = site.apply(plan)
    assert resumed.exit_code == 0, resumed.output
    assert f"{len(before)} already done before" in resumed.output
    assert f"{len(actions) - len(before)} done" in resumed.output
    counts = done_events(engine, plan_id)
    assert counts.keys() == {a["id"] for a in actions}
    assert set(counts.values()) == {1}
    after = {e["action_id"]: e["seq"] for e in ledger_events(engine, "done")}
    assert all(after[a] == seq for a, seq in before.items())
    assert action_states(engine) == {"done": len(actions)}
    assert storage_files(site) == expected_storage(site)
    assert temp_leftovers(site) == []
    assert verified_mismatches(site, engine) == {}
    assert cli("ledger", "verify", "-c", site.config).exit_code == 0

    # Once finished, running it again does nothing more...
    again = site.apply(plan)
    assert again.exit_code == 0, again.output
    assert f"0 done, {len(actions)} already done before" in again.output
    assert set(done_events(engine, plan_id).values()) == {1}
    # ...and a change that is not its own still makes it stale.
    site.write([SiteFile(OLD, "late/arrival.h5", b"new bytes" * 100)])
    stale = site.apply(plan)
    assert stale.exit_code == 1
    assert STALE in stale.output
    site.close()
