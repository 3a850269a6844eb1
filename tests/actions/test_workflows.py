"""Workflow jobs with real processes: the stage semantics of spec/rules.md section 8
(order, quoting, output variables, runIf, timeout, repeats, parallelExec, workingDir),
the DM's sample workflow as it is, and `run workflow` rules through plan, apply,
`policyd jobs` and a crash in the middle of a job."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result
from sqlalchemy import Engine, select, update

from policyd.actions import workflow as wf
from policyd.actions.apply import apply_plan, load_plan
from policyd.actions.context import ApplyOptions
from policyd.actions.workflow import JobOutcome, content_of, run_job
from policyd.audit import ledger
from policyd.catalog.db import open_catalog
from policyd.catalog.schema import actions, files, jobs, locations, replicas
from policyd.cli import main
from policyd.planner.engine import PlanOptions, make_plan
from policyd.planner.run import site_rules
from policyd.rules.workflows import Workflow, load_workflow_data
from policyd.site import open_site
from tests.catalog.helpers import write_jsonl
from tests.conftest import SITE_CONFIG

SAMPLES = json.loads((Path(__file__).parents[1] / "data" / "dm-service-samples.json").read_text())


def workflow(stages: dict[str, dict[str, Any]], name: str = "w") -> Workflow:
    loaded, problems = load_workflow_data({"name": name, "owner": "test", "stages": stages})
    assert loaded is not None, problems
    return loaded


def run(flow: Workflow, root: Path, **variables: Any) -> JobOutcome:
    return run_job(flow, {"id": "job-1", **variables}, root=root, clock=time.time)


def child(outcome: JobOutcome, stage: str, index: int = 0) -> dict[str, Any]:
    return list(outcome.stages[stage]["childProcesses"].values())[index]


# ---------------------------------------------------------------------------
# stage semantics


def test_stages_run_in_natural_order_of_their_keys(tmp_path: Path) -> None:
    stages = {key: {"command": "echo $stage >> order.txt"} for key in ("10-x", "2-x", "1-y")}
    outcome = run(workflow(stages), tmp_path)
    assert outcome.status == "done"
    assert (tmp_path / "order.txt").read_text().split() == ["1-y", "2-x", "10-x"]
    assert list(outcome.stages) == ["1-y", "2-x", "10-x"]
    numbers = [child(outcome, k)["childProcessNumber"] for k in outcome.stages]
    assert numbers == [0, 1, 2]  # numbered through the job, as the DM does


def test_a_hostile_file_name_is_one_harmless_argument(tmp_path: Path) -> None:
    hostile = "a; touch pwned1 `touch pwned2` $(touch pwned3) 'x\" && touch pwned4 #\nb"
    flow = workflow(
        {
            "1-args": {"command": "printf '[%s]\\n' $filePath ${filePath}"},
            "2-cond": {"command": "true", "runIf": '"pwned" in "$filePath"'},
        }
    )
    outcome = run(flow, tmp_path, filePath=hostile)
    assert outcome.status == "done"
    assert child(outcome, "1-args")["stdOut"] == f"[{hostile}]\n[{hostile}]\n"
    assert outcome.stages["2-cond"]["status"] == "done"  # the literal held the whole value
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_output_variables_flow_to_later_stages(tmp_path: Path) -> None:
    flow = workflow(
        {
            "01-stage": {
                "command": "echo 'Created processing output dir: /data/out dir'; echo 'File number: 7'",
                "outputVariableRegexList": [
                    "Created processing output dir: (?P<outputDir>.*)",
                    "File number: (?P<fileNumber>\\d+)",
                ],
            },
            "02-use": {"command": "printf '<%s>' $outputDir ${outputDir}/n$fileNumber"},
            "03-again": {
                "command": "echo run $fileNumber",
                "outputVariableRegexList": ["run (?P<fileNumber>\\d+)", "(?P<never>nomatch)"],
            },
        }
    )
    outcome = run(flow, tmp_path)
    assert child(outcome, "02-use")["stdOut"] == "</data/out dir></data/out dir/n7>"
    assert outcome.variables == {
        "id": "job-1",
        "outputDir": "/data/out dir",
        "fileNumber": "7",
    }


def test_run_if_false_skips_the_stage_and_values_stay_values(tmp_path: Path) -> None:
    flow = workflow(
        {
            "1-h5": {"command": "touch h5-ran", "runIf": '"h5" in "$filePath"'},
            "2-all": {"command": "touch all-ran"},
        }
    )
    skipped = run(flow, tmp_path, filePath='__import__("os").system("touch pwned")')
    assert skipped.status == "done"
    assert skipped.stages["1-h5"] == {
        "command": "touch h5-ran",
        "status": "skipped",
        "startTime": skipped.stages["1-h5"]["startTime"],
        "endTime": skipped.stages["1-h5"]["endTime"],
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all-ran"]
    ran = run(flow, tmp_path, filePath="/data/a.h5")
    assert ran.stages["1-h5"]["status"] == "done"
    assert (tmp_path / "h5-ran").exists()


def test_a_condition_that_cannot_be_evaluated_fails_its_stage(tmp_path: Path) -> None:
    flow = workflow({"1": {"command": "true", "runIf": "$fileSize > 10"}, "2": {"command": "true"}})
    outcome = run(flow, tmp_path, fileSize="big")
    assert (outcome.status, outcome.stage) == ("failed", "1")
    assert "cannot order text and a number" in outcome.message
    assert outcome.stages["2"]["status"] == "not run"


def test_failure_stops_the_job_and_keeps_exit_status_and_output(tmp_path: Path) -> None:
    flow = workflow(
        {
            "1-fail": {"command": "echo partial; echo 'it broke' >&2; exit 3"},
            "2-next": {"command": "touch never"},
        }
    )
    outcome = run(flow, tmp_path)
    assert (outcome.status, outcome.stage, outcome.message) == ("failed", "1-fail", "exit status 3")
    record = child(outcome, "1-fail")
    assert (record["exitStatus"], record["stdOut"], record["stdErr"]) == (
        3,
        "partial\n",
        "it broke\n",
    )
    assert record["endTime"] >= record["startTime"]
    assert outcome.stages["2-next"] == {"command": "touch never", "status": "not run"}
    assert not (tmp_path / "never").exists()
    assert wf.failure_message("w", "job-1", outcome) == (
        "workflow w job job-1: stage 1-fail failed (exit status 3): it broke"
    )


def test_output_tails_keep_the_end(tmp_path: Path) -> None:
    flow = workflow({"1": {"command": "seq 1 100000; seq 1 50000 >&2"}})
    record = child(run(flow, tmp_path), "1")
    assert len(record["stdOut"]) == wf.TAIL_CHARS
    assert record["stdOut"].endswith("99999\n100000\n")
    assert record["stdErr"].endswith("50000\n")


def test_timeout_stops_the_whole_process_group(tmp_path: Path) -> None:
    flow = workflow(
        {
            "1-slow": {"command": "(sleep 1; touch late) & sleep 30", "timeout": 0.3},
            "2-next": {"command": "touch never"},
        }
    )
    started = time.monotonic()
    outcome = run(flow, tmp_path)
    assert time.monotonic() - started < 5
    assert (outcome.status, outcome.stage) == ("timeout", "1-slow")
    assert child(outcome, "1-slow")["exitStatus"] == -signal.SIGTERM
    assert outcome.stages["2-next"]["status"] == "not run"
    time.sleep(1.5)
    assert not (tmp_path / "late").exists()  # the background child was stopped too


def test_a_stage_that_ignores_sigterm_gets_sigkill(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wf, "KILL_GRACE", 0.3)
    flow = workflow({"1": {"command": "trap '' TERM; sleep 30", "timeout": 0.2}})
    started = time.monotonic()
    outcome = run(flow, tmp_path)
    assert time.monotonic() - started < 5
    assert outcome.status == "timeout"
    assert child(outcome, "1")["exitStatus"] == -signal.SIGKILL


COUNTER = "n=$(cat n 2>/dev/null || echo 0); n=$((n+1)); echo $n > n; echo count=$n"


def test_repeat_until_reruns_every_period_until_it_holds(tmp_path: Path) -> None:
    flow = workflow(
        {
            "1-poll": {
                "command": COUNTER,
                "outputVariableRegexList": ["count=(?P<count>\\d+)"],
                "repeatPeriod": 0.2,
                "repeatUntil": "$count >= 3",
                "maxRepeats": 5,
            },
            "2-after": {"command": "echo got $count"},
        }
    )
    started = time.monotonic()
    outcome = run(flow, tmp_path)
    assert time.monotonic() - started >= 0.4  # two periods between three runs
    assert outcome.status == "done"
    assert child(outcome, "1-poll")["runs"] == 3
    assert child(outcome, "2-after")["stdOut"] == "got 3\n"


def test_reaching_max_repeats_fails_the_stage(tmp_path: Path) -> None:
    flow = workflow(
        {
            "1-poll": {
                "command": COUNTER,
                "outputVariableRegexList": ["count=(?P<count>\\d+)"],
                "repeatPeriod": 0.05,
                "repeatUntil": "$count > 10",
                "maxRepeats": 3,
            }
        }
    )
    outcome = run(flow, tmp_path)
    assert (outcome.status, outcome.stage) == ("failed", "1-poll")
    assert outcome.message == "repeatUntil '$count > 10' still false after 3 runs"
    record = child(outcome, "1-poll")
    assert (record["runs"], record["status"], record["exitStatus"]) == (3, "failed", 0)
    assert (tmp_path / "n").read_text() == "3\n"


def test_parallel_exec_runs_once_per_input_file_at_once(tmp_path: Path) -> None:
    inputs = [f"/data/part {i}.h5" for i in range(4)]
    flow = workflow(
        {
            "1-each": {
                "command": "sleep 0.5; echo did $filePath; echo last=$filePath",
                "parallelExec": True,
                "outputVariableRegexList": ["last=(?P<last>.*)"],
            },
            "2-once": {"command": "echo $filePath"},
        }
    )
    started = time.monotonic()
    outcome = run(flow, tmp_path, filePath="/data/main.h5", filePathList=inputs)
    assert time.monotonic() - started < 1.5  # four half-second runs side by side
    runs = list(outcome.stages["1-each"]["childProcesses"].values())
    assert [r["filePath"] for r in runs] == inputs
    assert [r["stdOut"].splitlines()[0] for r in runs] == [f"did {p}" for p in inputs]
    assert max(r["startTime"] for r in runs) < min(r["endTime"] for r in runs)
    assert outcome.variables["last"] == inputs[-1]  # input order, the last one wins
    assert child(outcome, "2-once")["stdOut"] == "/data/main.h5\n"


def test_parallel_exec_input_files_from_an_earlier_stage_or_the_job_file(tmp_path: Path) -> None:
    (tmp_path / "chunks").mkdir()
    for name in ("c1", "c2", "c3"):
        (tmp_path / "chunks" / name).write_text(name)
    listed = workflow(
        {
            "1-list": {
                "command": "ls -1 chunks/*",
                "outputVariableRegexList": ["(?P<filePathList>(?s:.+))"],
            },
            "2-each": {"command": "cat $filePath", "parallelExec": True},
        }
    )
    outcome = run(listed, tmp_path, filePath="/data/main.h5")
    runs = list(outcome.stages["2-each"]["childProcesses"].values())
    assert [(r["filePath"], r["stdOut"]) for r in runs] == [
        ("chunks/c1", "c1"),
        ("chunks/c2", "c2"),
        ("chunks/c3", "c3"),
    ]
    alone = workflow({"1-each": {"command": "echo $filePath", "parallelExec": True}})
    one = run(alone, tmp_path, filePath="/data/main.h5")
    assert [r["stdOut"] for r in one.stages["1-each"]["childProcesses"].values()] == [
        "/data/main.h5\n"
    ]


def test_parallel_exec_fails_when_one_run_fails(tmp_path: Path) -> None:
    flow = workflow({"1": {"command": 'test "$filePath" != b', "parallelExec": True}})
    outcome = run(flow, tmp_path, filePath="x", filePathList="a\nb\n\nc\n")
    runs = list(outcome.stages["1"]["childProcesses"].values())
    assert [(r["filePath"], r["status"]) for r in runs] == [
        ("a", "done"),
        ("b", "failed"),
        ("c", "done"),
    ]
    assert (outcome.status, outcome.message) == ("failed", "exit status 1")


def test_working_dir_is_a_plain_path_relative_to_the_config_folder(tmp_path: Path) -> None:
    (tmp_path / "work" / "Smith Mar18").mkdir(parents=True)
    flow = workflow(
        {
            "1-in": {"command": "pwd", "workingDir": "work/$experimentName"},
            "2-default": {"command": "pwd"},
            "3-absolute": {"command": "pwd", "workingDir": "/"},
            "4-missing": {"command": "pwd", "workingDir": "nowhere"},
        }
    )
    outcome = run(flow, tmp_path, experimentName="Smith Mar18")
    assert child(outcome, "1-in")["stdOut"] == f"{tmp_path}/work/Smith Mar18\n"
    assert child(outcome, "2-default")["stdOut"] == f"{tmp_path}\n"
    assert child(outcome, "3-absolute")["stdOut"] == "/\n"
    assert (outcome.status, outcome.stage) == ("failed", "4-missing")
    assert outcome.message.startswith("cannot start: No such file or directory")
    assert child(outcome, "4-missing")["exitStatus"] is None


def test_the_dm_sample_workflow_runs_as_it_is(tmp_path: Path) -> None:
    """The DM's example-01 as the service returned it: its `\\"` escapes reach the shell,
    so stage 04's `cut -d\\" \\"` reads a file named `"`; the DM's own `/bin/sh -c`
    fails there the same way, with the record its failed job shows."""
    source = tmp_path / "data.bin"
    source.write_bytes(b"sample")
    flow = workflow(SAMPLES["workflow"]["stages"], name=SAMPLES["workflow"]["name"])
    job = "7e01fb97-44b1-4b7f-b1ca-d08624eb8c77"
    outcome = run_job(flow, {"id": job, "filePath": str(source)}, root=tmp_path, clock=time.time)
    stamp = outcome.variables["timeStamp"]
    out_dir = Path(f"/tmp/workflow.{stamp}")
    try:
        assert stamp.isdigit() and len(stamp) == 14
        assert (out_dir / f"{job}.out").read_text() == f'"START JOB ID: {job}"\n'
        assert (outcome.status, outcome.stage) == ("failed", "04-MD5SUM")
        statuses = {k: v["status"] for k, v in outcome.stages.items()}
        assert statuses == {
            "01-START": "done",
            "02-MKDIR": "done",
            "03-ECHO": "done",
            "04-MD5SUM": "failed",
            "05-ECHO": "not run",
            "06-DONE": "not run",
        }
        failed = child(outcome, "04-MD5SUM")
        assert failed["exitStatus"] == 1
        assert failed["stdErr"] == "cut: '\"': No such file or directory\n"
        assert failed["command"] == f'/bin/md5sum {source} | cut -f1 -d\\" \\"'
        dm_child = SAMPLES["failed_job"]["workflow"]["stages"]["030-EXPORT"]["childProcesses"]["2"]
        assert set(dm_child) - {"submitTime", "userAccount"} <= set(failed)
        assert (failed["status"], failed["stageId"]) == ("failed", "04-MD5SUM")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def test_ledger_appends_from_threads_keep_one_chain(tmp_path: Path) -> None:
    """Jobs log their start from worker threads while the runner logs from its own."""
    engine = open_catalog(f"sqlite:///{tmp_path / 'c.db'}")
    errors: list[BaseException] = []

    def append(n: int) -> None:
        for i in range(50):
            try:
                with engine.begin() as conn:
                    ledger.append(conn, "test", at=float(i), payload={"thread": n})
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=append, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    result = ledger.verify(engine)
    assert (result.ok, result.events) == (True, 200)


# ---------------------------------------------------------------------------
# run rules through plan, apply and `policyd jobs`

RULES = """\
station 8IDI
rule reduce
  run workflow reduce for files where file.ext == "h5"
  with out = "results", tag = "t1"
"""

REDUCE = """\
name: reduce
owner: 8idi
stages:
  01-sum:
    command: "md5sum $filePath"
    outputVariableRegexList: ["^(?P<sum>[0-9a-f]{32})"]
  02-write:
    command: "mkdir -p $out && echo $experimentName $experimentFilePath $fileSize $md5Sum $station $sum $tag > $out/$id.txt"
  03-check:
    command: "test $sum = $md5Sum"
"""


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def put_files(site: Path, contents: dict[str, bytes], verified_on: tuple[str, ...]) -> None:
    """Files of experiment E1 on the given locations, imported as verified replicas."""
    records: list[dict[str, Any]] = [
        {
            "record": "experiment",
            "name": "E1",
            "station": "8IDI",
            "startDate": "2026-01-01T00:00:00Z",
        }
    ]
    for name, data in contents.items():
        for location in verified_on:
            target = site / "storage" / location / "8IDI" / "E1" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        records.append(
            {
                "record": "file",
                "experimentName": "E1",
                "experimentFilePath": name,
                "fileSize": len(data),
                "md5Sum": hashlib.md5(data).hexdigest(),
                "fileModificationTime": 1767225600.0,
                "replicas": [
                    {"location": loc, "path": f"8IDI/E1/{name}", "verified": True}
                    for loc in verified_on
                ],
            }
        )
    result = cli("catalog", "import", "jsonl", write_jsonl(site / "import.jsonl", records))
    assert result.exit_code == 0, result.output


def make_site(site: Path, rules: str, workflows: dict[str, str], retry: str) -> None:
    (site / "policyd.yaml").write_text(SITE_CONFIG.format(extra=f"retry: {retry}\n"))
    (site / "rules").mkdir()
    (site / "rules" / "r.policy").write_text(rules)
    (site / "workflows").mkdir()
    for name, text in workflows.items():
        (site / "workflows" / name).write_text(text)


def plan_actions(site: Path) -> list[dict[str, Any]]:
    result = cli("plan", "--format", "json")
    assert result.exit_code == 0, result.output
    return [a for a in orjson.loads(result.stdout_bytes)["actions"] if a["kind"] == "workflow"]


def job_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        query = select(jobs, files.c.path).join(files).order_by(jobs.c.submitted_at)
        return [dict(r._mapping) for r in conn.execute(query)]


@pytest.fixture
def site(site_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COLUMNS", "200")  # `policyd jobs` tables as a wide terminal shows them
    make_site(
        site_dir,
        RULES,
        {"reduce.yaml": REDUCE},
        "{attempts: 2, backoff: 0.1 s, max_backoff: 0.1 s}",
    )
    return site_dir


def test_run_rule_plan_apply_once_per_content(site: Path) -> None:
    a = b"first content of a"
    # voyager is later than daq-8idi in config order; daq-8idi's replica is only present
    put_files(site, {"a.h5": a, "b.tif": b"not h5"}, ("daq-8idi", "voyager"))
    engine = open_site(site / "policyd.yaml").engine
    with engine.begin() as conn:  # only voyager holds a verified one now
        daq = select(locations.c.id).where(locations.c.name == "daq-8idi").scalar_subquery()
        conn.execute(update(replicas).where(replicas.c.location_id == daq).values(state="present"))

    planned = plan_actions(site)
    assert [(x["file"], x["workflow"], x["args"]) for x in planned] == [
        ("a.h5", "reduce", {"out": "results", "tag": "t1"})
    ]
    plan_file = site / "plan.json"
    assert cli("plan", "--out", plan_file).exit_code == 0
    applied = cli("apply", plan_file)
    assert applied.exit_code == 0, applied.output

    [row] = job_rows(engine)
    md5 = hashlib.md5(a).hexdigest()
    assert (row["path"], row["workflow"], row["rule"], row["status"]) == (
        "a.h5",
        "reduce",
        "8IDI/reduce",
        "done",
    )
    assert (row["content"], row["stage"], row["attempts"]) == (md5, "03-check", 1)
    assert row["submitted_at"] <= row["started_at"] <= row["ended_at"]
    replica = site / "storage" / "voyager" / "8IDI" / "E1" / "a.h5"
    assert row["variables"] == {
        "id": row["id"],
        "experimentName": "E1",
        "experimentFilePath": "a.h5",
        "fileSize": len(a),
        "md5Sum": md5,
        "station": "8IDI",
        "filePath": str(replica),
        "out": "results",
        "tag": "t1",
        "sum": md5,
    }
    assert [s["status"] for s in row["stages"].values()] == ["done", "done", "done"]
    written = site / "results" / f"{row['id']}.txt"  # workingDir: the config folder
    assert written.read_text() == f"E1 a.h5 {len(a)} {md5} 8IDI {md5} t1\n"
    [sum_run] = row["stages"]["01-sum"]["childProcesses"].values()
    assert sum_run["command"] == f"md5sum {replica}"
    assert sum_run["stdOut"] == f"{md5}  {replica}\n"

    # once per content: nothing to plan, and the same plan again is a resume
    assert plan_actions(site) == []
    again = cli("apply", plan_file)
    assert again.exit_code == 0, again.output
    assert "1 already done before" in again.output
    assert len(job_rows(engine)) == 1

    # new content (a re-import with another md5): the workflow runs again
    put_files(site, {"a.h5": b"second content"}, ("voyager",))
    assert [x["file"] for x in plan_actions(site)] == ["a.h5"]
    assert cli("apply", "--yes").exit_code == 0
    rows = job_rows(engine)
    assert [r["content"] for r in rows] == [md5, hashlib.md5(b"second content").hexdigest()]
    assert [r["status"] for r in rows] == ["done", "done"]
    assert plan_actions(site) == []

    listed = cli("jobs")
    assert listed.exit_code == 0, listed.output
    assert "2 jobs" in listed.output
    lines = listed.output.splitlines()
    for r in rows:
        [line] = [x for x in lines if r["id"][:8] in x]
        assert line.split("│")[1:6] == [
            f" {r['id'][:8]} ",
            " done   ",
            " reduce   ",
            " E1:a.h5 ",
            " 03-check ",
        ]
    as_json = orjson.loads(cli("jobs", "--format", "json", "--workflow", "reduce").stdout_bytes)
    assert [(j["id"], j["status"], j["content"]) for j in as_json] == [
        (r["id"], "done", r["content"]) for r in rows
    ]
    assert cli("jobs", "--status", "failed").output.strip() == "no jobs match"
    assert cli("jobs", "--workflow", "other").output.strip() == "no jobs match"

    shown = cli("jobs", "show", rows[0]["id"][:8])
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines()[:3] == [
        f"job {rows[0]['id']}: done (attempt 1)",
        "  workflow reduce, rule 8IDI/reduce",
        f"  file E1:a.h5, content {md5}",
    ]
    assert f"    $ md5sum {replica}" in shown.output
    assert f"      {md5}  {replica}" in shown.output
    assert "stage 03-check: done" in shown.output
    shown_json = orjson.loads(cli("jobs", "show", rows[1]["id"], "--format", "json").stdout_bytes)
    assert shown_json["stages"] == rows[1]["stages"]
    assert cli("jobs", "show", "nope").exit_code == 1

    verified = cli("ledger", "verify")
    assert verified.exit_code == 0, verified.output


def test_a_file_without_md5_runs_on_the_content_its_copy_verified(site: Path) -> None:
    """A file with no md5 has no verified replica to read until a copy in the same plan
    makes one (and sets the md5): the job waits for it and runs on that content."""
    data = b"no checksum known"
    target = site / "storage" / "daq-8idi" / "8IDI" / "E1" / "c.h5"
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    records = [
        {
            "record": "experiment",
            "name": "E1",
            "station": "8IDI",
            "startDate": "2026-01-01T00:00:00Z",
        },
        {
            "record": "file",
            "experimentName": "E1",
            "experimentFilePath": "c.h5",
            "fileSize": len(data),
            "fileModificationTime": 1767225600.5,
            "replicas": [{"location": "daq-8idi", "path": "8IDI/E1/c.h5"}],
        },
    ]
    assert cli("catalog", "import", "jsonl", write_jsonl(site / "c.jsonl", records)).exit_code == 0
    layout = 'rule layout\n  place files where file.ext == "h5" on voyager at "{station}/{experiment.name}/{file.path}"\n'
    (site / "rules" / "r.policy").write_text(RULES + layout)
    plan = orjson.loads(cli("plan", "--format", "json").stdout_bytes)
    by_kind = {a["kind"]: a for a in plan["actions"]}
    assert by_kind["workflow"]["after"] == [by_kind["verify"]["id"]]
    applied = cli("apply", "--yes")
    assert applied.exit_code == 0, applied.output
    [row] = job_rows(open_site(site / "policyd.yaml").engine)
    md5 = hashlib.md5(data).hexdigest()
    assert (row["status"], row["content"], row["variables"]["md5Sum"]) == ("done", md5, md5)
    # the copy verified its source too, and daq-8idi comes first in config order
    assert row["variables"]["filePath"] == str(target)
    assert plan_actions(site) == []
    assert content_of(None, 17, 1767225600.5) == "size=17,modified=1767225600.5"


def test_a_failed_job_is_retried_then_suspended_and_not_planned_again(site: Path) -> None:
    put_files(site, {"a.h5": b"data"}, ("daq-8idi",))
    failing = "name: reduce\nowner: o\nstages:\n  1-go:\n    command: 'echo try $id; echo bad input >&2; exit 4'\n"
    (site / "workflows" / "reduce.yaml").write_text(failing)
    plan_file = site / "plan.json"
    assert cli("plan", "--out", plan_file).exit_code == 0
    result = cli("apply", plan_file)
    assert result.exit_code == 1
    assert "stage 1-go failed (exit status 4): bad input [suspended]" in result.output

    engine = open_site(site / "policyd.yaml").engine
    [row] = job_rows(engine)
    assert (row["status"], row["attempts"], row["stage"]) == ("failed", 2, "1-go")
    assert row["content"] == hashlib.md5(b"data").hexdigest()
    with engine.connect() as conn:
        events = [(e.event, e.payload.get("attempt")) for e in ledger.events(conn)]
        state = conn.execute(select(actions.c.state, actions.c.attempts)).one()
    assert tuple(state) == ("suspended", 2)
    for expected in [("job_started", 1), ("failed", 1), ("job_started", 2), ("suspended", 2)]:
        assert expected in events

    assert plan_actions(site) == []  # suspended: once per content, listed by policyd jobs
    listed = cli("jobs", "--status", "failed")
    assert row["id"][:8] in listed.output and "1-go" in listed.output
    shown = cli("jobs", "show", row["id"])
    assert "stage 1-go: failed (exit status 4)" in shown.output
    assert "  run 0: failed, exit 4" in shown.output
    assert "      bad input" in shown.output
    rerun = cli("apply", plan_file)  # the catalog changed by this plan's own actions only
    assert (rerun.exit_code, "0 done, 1 already done before" in rerun.output) == (0, True)


def test_a_workflow_gone_since_the_rules_were_read_suspends_without_a_job(site: Path) -> None:
    """`policyd apply` re-checks the rules first; a caller holding rules read earlier
    (the daemon between two reloads) meets a workflow file changed under it."""
    put_files(site, {"a.h5": b"data"}, ("daq-8idi",))
    opened = open_site(site / "policyd.yaml")
    rules = site_rules(opened.config)
    made = make_plan(opened.config, opened.engine, rules, PlanOptions(time.time()))
    (site / "workflows" / "reduce.yaml").unlink()
    loaded = load_plan(made.json_bytes(), "plan", opened.config)
    report = apply_plan(opened.config, opened.engine, rules, loaded, ApplyOptions())
    assert report.counts["suspended"] == 1
    missing = "a1 workflow E1:a.h5: workflow 'reduce' is not defined by the site's workflow files"
    assert any(p.startswith(missing) for p in report.problems), report.problems
    assert job_rows(opened.engine) == []


SLOW = """\
name: reduce
owner: o
stages:
  1-slow:
    # slow the first time only: the crash comes while it sleeps
    command: "echo $id >> runs.txt; test -e crashed || { touch crashed; sleep 2; }"
"""


def crash_apply_during_the_job(site: Path, plan_file: Path, engine: Engine) -> str:
    """Start `policyd apply PLAN` in its own process, kill -9 it while the job runs."""
    process = subprocess.Popen(
        [sys.executable, "-m", "policyd", "apply", str(plan_file)],
        cwd=site,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = job_rows(engine)
        if rows and rows[0]["status"] == "running" and (site / "runs.txt").exists():
            break
        time.sleep(0.05)
    else:
        process.kill()
        pytest.fail("the job never started")
    process.send_signal(signal.SIGKILL)
    process.wait()
    [row] = job_rows(engine)
    assert (row["status"], row["content"], row["stage"]) == ("running", None, "1-slow")
    return str(row["id"])


def test_apply_resumes_a_job_after_a_crash(site: Path) -> None:
    (site / "workflows" / "reduce.yaml").write_text(SLOW)
    put_files(site, {"a.h5": b"data"}, ("daq-8idi",))
    plan_file = site / "plan.json"
    assert cli("plan", "--out", plan_file).exit_code == 0
    engine = open_site(site / "policyd.yaml").engine
    job = crash_apply_during_the_job(site, plan_file, engine)

    listed = cli("jobs", "--status", "running")
    assert job[:8] in listed.output
    resumed = cli("apply", plan_file)  # the running row is this plan's own change
    assert resumed.exit_code == 0, resumed.output
    [row] = job_rows(engine)
    assert (row["id"], row["status"], row["attempts"]) == (job, "done", 2)
    assert (site / "runs.txt").read_text() == f"{job}\n{job}\n"
    assert plan_actions(site) == []


def test_a_job_left_by_a_crash_is_aborted_when_a_new_plan_runs_the_file(site: Path) -> None:
    (site / "workflows" / "reduce.yaml").write_text(SLOW)
    put_files(site, {"a.h5": b"data"}, ("daq-8idi",))
    plan_file = site / "plan.json"
    assert cli("plan", "--out", plan_file).exit_code == 0
    engine = open_site(site / "policyd.yaml").engine
    old = crash_apply_during_the_job(site, plan_file, engine)

    assert [x["file"] for x in plan_actions(site)] == ["a.h5"]  # it never finished
    assert cli("apply", "--yes").exit_code == 0
    rows = {r["id"]: r for r in job_rows(engine)}
    assert rows[old]["status"] == "aborted" and rows[old]["content"] is None
    [new] = [r for r in rows.values() if r["id"] != old]
    assert (new["status"], new["content"]) == ("done", hashlib.md5(b"data").hexdigest())
    assert cli("jobs", "--status", "aborted").output.count(old[:8]) == 1


def test_jobs_on_an_empty_catalog(site: Path) -> None:
    open_site(site / "policyd.yaml").engine.dispose()  # an empty catalog
    result = cli("jobs")
    assert (result.exit_code, result.output.strip()) == (0, "no jobs")
    assert orjson.loads(cli("jobs", "--format", "json").stdout_bytes) == []
    assert "policyd jobs show 7e01fb97" in cli("jobs", "--help").output
