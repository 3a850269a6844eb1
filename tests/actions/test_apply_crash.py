"""Crash safety (spec/rules.md section 9, invariants 2, 3 and 5): a child `policyd apply
PLAN.json` killed with SIGKILL at seeded random moments, then the same plan run again.

Each trial starts from a fresh copy of one site (small files and a few large ones
over the 4 MiB copy chunk, on the DAQ disk; rules that place, archive and release
them) and kills the child once the ledger holds a random number of events, a random
few milliseconds later, so the kill lands anywhere: while the plan is recorded,
mid-write of a large file, between a copy's rename and its catalog record, inside a
delete's transaction. Right after the kill the catalog must already be safe (no
replica recorded verified whose bytes differ, except the DAQ copy that an interrupted
delete had just unlinked, whose delete is still `running`; a ledger that verifies;
no action done twice). After the re-run every file is in place exactly once, at its
layout path with its md5, nothing else is on storage (no `.policyd-tmp` file), every
action is done once, and the ledger verifies.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path

import orjson

from policyd.actions.runner import plan_id_of
from tests.actions.sitekit import (
    OLD,
    Site,
    SiteFile,
    action_states,
    catalog_replicas,
    cli,
    done_events,
    expected_storage,
    fork_apply,
    kill_after,
    make_site,
    sample_files,
    start_apply,
    storage_files,
    temp_leftovers,
    verified_mismatches,
)

TRIALS = 10
SEED = 20261201


def build_template(root: Path) -> tuple[Site, Path]:
    site = make_site(root, f"sqlite:///{root / 'catalog.db'}")
    rng = random.Random(SEED)
    large = [
        SiteFile(OLD, f"large/frames_{i}.h5", rng.randbytes(rng.randint(5 * 2**20, 6 * 2**20)))
        for i in range(2)
    ]
    site.write(sample_files(12, seed=SEED, experiment=OLD, prefix="small") + large)
    return site, site.plan()


def interrupted_deletes(site: Site) -> set[tuple[str, str, str]]:
    """(experiment, file, target) of delete actions a kill left `running`."""
    with site.engine().connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT experiment, file, target FROM actions WHERE kind = 'delete' "
            "AND state = 'running'"
        )
        return {(r[0], r[1], r[2]) for r in rows}


def test_sigkill_at_random_moments_then_resume(tmp_path: Path) -> None:
    template, template_plan = build_template(tmp_path / "template")
    actions = orjson.loads(template_plan.read_bytes())["actions"]
    plan_id = plan_id_of(template_plan.read_bytes())
    big_copies = [a["id"] for a in actions if a["kind"] == "copy" and "large/" in a["file"]]
    # planned + (running + done) per action: the ledger of an uninterrupted run
    total_events = 1 + 2 * len(actions)
    rng = random.Random(SEED)
    seen: Counter[str] = Counter()

    for trial in range(TRIALS):
        site = template.clone(tmp_path / f"trial{trial}")
        plan = site.root / template_plan.name
        engine = site.engine()
        # the first child is `python -m policyd apply`; the others are forked from this
        # process, which saves their start-up (imports) and runs the same code
        child = (start_apply if trial == 0 else fork_apply)(site, plan)
        if trial % 4 == 3:
            # mid-write of a large file: just after its copy starts
            kill_after(
                child,
                engine,
                1,
                event="running",
                action_id=rng.choice(big_copies),
                extra_delay=rng.uniform(0.0, 0.15),
            )
        else:
            kill_after(
                child,
                engine,
                rng.randint(1, total_events - 5),
                extra_delay=rng.uniform(0.0, 0.03),
            )
        where = f"trial {trial}"
        seen["killed" if child.returncode == -9 else "finished before the kill"] += 1
        seen["temporary files left by the kill"] += len(temp_leftovers(site))
        seen["deletes interrupted"] += len(interrupted_deletes(site))

        # Safe at the moment of the crash, before anything repairs it.
        unsafe = verified_mismatches(site, engine)
        for key in interrupted_deletes(site):
            unsafe.pop(key, None)
        assert unsafe == {}, where
        assert set(done_events(engine, plan_id).values()) <= {1}, where
        assert cli("ledger", "verify", "-c", site.config).exit_code == 0, where

        resumed = site.apply(plan)
        assert resumed.exit_code == 0, f"{where}: {resumed.output}"
        assert storage_files(site) == expected_storage(site), where
        assert temp_leftovers(site) == [], where
        assert verified_mismatches(site, engine) == {}, where
        counts = done_events(engine, plan_id)
        assert counts.keys() == {a["id"] for a in actions}, where
        assert set(counts.values()) == {1}, where
        assert action_states(engine) == {"done": len(actions)}, where
        placed = {(k[2], r["path"]) for k, r in catalog_replicas(engine).items()}
        assert placed == set(expected_storage(site)), where
        verified = cli("ledger", "verify", "-c", site.config)
        assert verified.exit_code == 0, f"{where}: {verified.output}"
        site.close()
    print(f"crash trials: {dict(seen)}")


def test_a_new_plan_removes_what_a_stale_interrupted_plan_left(tmp_path: Path) -> None:
    """A kill mid-write of a large file leaves its temporary file; the DAQ then catalogs
    more files, so that plan is stale and a new one is made. The new plan's apply
    removes the old plan's leftover too (no other apply can be writing it: this one
    holds the catalog lock), so no `.policyd-tmp` file is left for good."""
    site = make_site(tmp_path / "site", f"sqlite:///{tmp_path / 'site' / 'catalog.db'}")
    big = SiteFile(OLD, "large/frames.h5", random.Random(1).randbytes(16 * 2**20))
    site.write([big])
    first = site.plan("first.json")
    child = fork_apply(site, first)
    while child.poll() is None and not temp_leftovers(site):
        time.sleep(0.001)
    kill_after(child, site.engine(), 0)
    assert child.returncode == -9, "the copy finished before it could be interrupted"
    assert temp_leftovers(site) != []

    site.write([SiteFile(OLD, "late/arrival.h5", b"late" * 100)])
    assert "the catalog changed" in site.apply(first).output
    second = site.plan("second.json")
    result = site.apply(second)
    assert result.exit_code == 0, result.output
    assert temp_leftovers(site) == []
    assert storage_files(site) == expected_storage(site)
    site.close()
