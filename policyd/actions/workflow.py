"""The workflow executor: a `run workflow` action carried out as a DM processing job.

A workflow (spec/rules.md section 8, loaded and checked by `policyd.rules.workflows`)
runs its stages in the natural order of their keys. Each stage's `command` goes to
`/bin/sh -c` with every `$name`/`${name}` replaced by its value shell-quoted, so that a
file named `a; rm -rf x` is one harmless argument; `runIf` and `repeatUntil` go through
the condition parser of that module, never `eval`. A value is quoted wherever it
stands, so inside a double-quoted string its quotes stay in the text: right for a
command handed on to another shell (`ssh host "tomo.py $filePath"`), wrong for `echo
"file $filePath"`. What is decided here, where the spec leaves it open:

* **Variables.** `id` (the job id) and `stage` (the stage's key) always; then
  `experimentName`, `experimentFilePath`, `fileSize`, `md5Sum`, `station` and
  `filePath` (the absolute path of the file's verified replica on the first `file://`
  location in config order that holds one; the job does not start when that file is
  not there), and the rule's `with` values. The job's own variables win over a `with`
  value of the same name. An unknown md5, size or station is the empty text. Named
  groups of a stage's `outputVariableRegexList` are searched in the first MiB of its
  stdout and set variables for later stages (and for its own `repeatUntil`).
* **Input files of a per-file job.** A `parallelExec` stage runs its command once per
  input file, as many as `MAX_PARALLEL` at once, each run with `$filePath` set to its
  input file. The input files are the lines of the variable `filePathList` when the
  job has it (from the rule's `with`, as a list or as lines of text, or from an earlier
  stage's output, e.g. `(?P<filePathList>(?s:.+))` over a listing), blank lines left
  out; otherwise the job's one file. Each run's output variables are taken in input
  order, a later run's winning.
* **Repeats.** `maxRepeats` counts runs of the command (60 runs every 60 s polls for an
  hour); without it a stage repeats until `repeatUntil` holds, as the DM does. A run
  that exits non-zero fails the stage at once: repeating is for polling.
* **Statuses.** A stage is `done`, `skipped` (`runIf` false), `failed` (non-zero exit
  or killed by a signal, a condition that cannot be evaluated, `maxRepeats` reached, a
  command that cannot start), `timeout` (a run outlived `timeout` seconds: its process
  group got SIGTERM, then SIGKILL after `KILL_GRACE` seconds), or `not run` (after a
  stage that did not succeed). A job is `running`, then `done` or the status of the
  stage that ended it (`failed`, `timeout`); `pending` while the runner will try it
  again; `aborted` when an apply stopped with the job running or pending and a later
  plan ran the file again. `workingDir` (and the folder of a stage without one) is
  relative to the site config's folder.
* **Records.** One row in `jobs` per action: the id is a UUID derived from the plan and
  action ids, so a retried or resumed action stays one job (`attempts` counts its
  runs). The row is written when the job starts and after each stage, so `policyd
  jobs` shows it live; its `content` (what `plan_run` compares: the md5, else
  `size=S,modified=M`, read when the job starts) is set only when the job ends done,
  or failed for the last time, so "once per (workflow, file, content)" counts finished
  jobs, never one that was interrupted. Each stage keeps its command and, per run of
  it, a DM-style `childProcesses` entry: the command as run, exit status, times and
  the last `TAIL_CHARS` characters of stdout and stderr. The runner's failure message
  (ledger, apply summary) names the stage, its status and the last line of stderr.
* **The fingerprint.** `jobs` rows are part of the catalog fingerprint, and the row is
  inserted outside the runner's transaction; its `job_started` ledger event carries
  the fingerprint difference, so `apply PLAN` run again after a crash still accepts
  the catalog (spec/rules.md section 9, invariant 3). The job's end is recorded by
  `record`, in the runner's transaction with its `done` event.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from itertools import count
from pathlib import Path
from typing import IO, Any, Final

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from policyd.actions import catalog_ops as cat
from policyd.actions.base import ActionFailed, Executor, Result, Step, register
from policyd.actions.context import ExecContext
from policyd.actions.stores import LocalStore
from policyd.audit import ledger
from policyd.catalog.schema import actions, experiments, files, jobs
from policyd.planner import fingerprint
from policyd.planner.plan import iso
from policyd.rules.workflows import (
    ConditionError,
    Stage,
    Workflow,
    condition_holds,
    load_workflows,
    substitute_command,
    variable_references,
)
from policyd.units import format_duration

#: The stdout and stderr a stage's record keeps: the end, where errors are.
TAIL_CHARS: Final = 4096
#: How much of a stage's stdout its output regexes search.
MATCH_BYTES: Final = 1 << 20
#: Runs of one `parallelExec` stage at once.
MAX_PARALLEL: Final = 8
#: Seconds between SIGTERM and SIGKILL for a stage that outlived its timeout.
KILL_GRACE: Final = 5.0

_JOB_NAMESPACE: Final = uuid.UUID("6f0d1c64-3a52-4f0e-9a57-2c1f4b8e7d10")


def job_id(plan_id: str, action_id: str) -> str:
    """The job of one plan action: the same for its retries and after a resume."""
    return str(uuid.uuid5(_JOB_NAMESPACE, f"{plan_id}/{action_id}"))


def content_of(md5: str | None, size: int | None, modified: float | None) -> str:
    """What a job ran on, as the planner's `plan_run` compares it."""
    return md5 if md5 else f"size={size},modified={modified}"


def input_files(variables: Mapping[str, Any]) -> list[str]:
    """The files a `parallelExec` stage runs once each for (see the module docstring)."""
    listed = variables.get("filePathList")
    if listed is None:
        return [str(variables["filePath"])] if "filePath" in variables else []
    items = [str(x) for x in listed] if isinstance(listed, list) else str(listed).splitlines()
    return [item for item in items if item.strip()]


# ---------------------------------------------------------------------------
# running a job


@dataclass
class JobOutcome:
    """A job's end: its status, the stage that ended it, its variables and stage records."""

    status: str
    stage: str | None
    variables: dict[str, Any]
    stages: dict[str, dict[str, Any]]
    started_at: float
    ended_at: float
    message: str = ""


@dataclass
class _Run:
    """One run of a stage's command (a DM child process), possibly repeated."""

    status: str
    record: dict[str, Any]
    found: dict[str, str] = field(default_factory=dict)
    message: str = ""


def run_job(
    workflow: Workflow,
    variables: Mapping[str, Any],
    *,
    root: Path,
    clock: Callable[[], float],
    progress: Callable[[str, dict[str, dict[str, Any]]], None] | None = None,
) -> JobOutcome:
    """Run every stage of `workflow` with `variables` (which must hold `id`); never raises
    for what a stage does, only reports it. `root` is where relative `workingDir`s are;
    `progress(stage, records)` is told as each stage starts and ends."""
    known: dict[str, Any] = dict(variables)
    records: dict[str, dict[str, Any]] = {}
    numbers = count()
    started = clock()
    status, last, message = "done", None, ""
    for key, stage in workflow.stage_items():
        if status != "done":
            records[key] = {"command": stage.command, "status": "not run"}
            continue
        last = key
        known["stage"] = key
        record: dict[str, Any] = {"command": stage.command, "status": "running"}
        record["startTime"] = clock()
        records[key] = record
        if progress is not None:
            progress(key, records)
        outcome, found, message = _run_stage(stage, key, known, root, clock, numbers, record)
        record["status"] = outcome
        record["endTime"] = clock()
        if message:
            record["message"] = message
        known.update(found)
        if outcome not in ("done", "skipped"):
            status = outcome
        if progress is not None:
            progress(key, records)
    known.pop("stage", None)
    return JobOutcome(status, last, known, records, started, clock(), message)


def _run_stage(
    stage: Stage,
    key: str,
    variables: dict[str, Any],
    root: Path,
    clock: Callable[[], float],
    numbers: Iterator[int],
    record: dict[str, Any],
) -> tuple[str, dict[str, str], str]:
    """(status, variables it defines, why it did not succeed) of one stage."""
    if stage.run_if is not None:
        try:
            if not condition_holds(stage.run_if, variables):
                return "skipped", {}, ""
        except ConditionError as exc:
            return "failed", {}, f"runIf {stage.run_if!r}: {exc.message}"
    if stage.parallel_exec:
        inputs = [{**variables, "filePath": path} for path in input_files(variables)]
    else:
        inputs = [dict(variables)]
    children: list[tuple[int, dict[str, Any]]] = [(next(numbers), v) for v in inputs]
    if len(children) == 1:
        runs = [_run_child(stage, key, *children[0], root, clock)]
    else:
        with ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL, len(children)))) as pool:
            runs = list(pool.map(lambda c: _run_child(stage, key, *c, root, clock), children))
    record["childProcesses"] = {str(r.record["childProcessNumber"]): r.record for r in runs}
    found: dict[str, str] = {}
    for run in runs:
        found.update(run.found)
    for run in runs:
        if run.status != "done":
            return run.status, found, run.message
    return "done", found, ""


def _run_child(
    stage: Stage,
    key: str,
    number: int,
    variables: dict[str, Any],
    root: Path,
    clock: Callable[[], float],
) -> _Run:
    """Run the command, again every `repeatPeriod` until `repeatUntil` holds."""
    command = substitute_command(stage.command, variables)
    workdir = root
    if stage.working_dir is not None:
        workdir = root / _substitute_plain(stage.working_dir, variables)
    record: dict[str, Any] = {
        "childProcessNumber": number,
        "stageId": key,
        "command": command,
        "workingDir": str(workdir),
    }
    if stage.parallel_exec:
        record["filePath"] = variables.get("filePath")
    runs = 0
    while True:
        runs += 1
        status, found, message = _run_once(command, workdir, stage, record, clock)
        if stage.repeat_until is None or status != "done":
            return _Run(status, record, found, message)
        record["runs"] = runs
        until = stage.repeat_until
        try:
            if condition_holds(until, {**variables, **found}):
                return _Run("done", record, found)
        except ConditionError as exc:
            return _failed(record, found, f"repeatUntil {until!r}: {exc.message}")
        if stage.max_repeats is not None and runs >= stage.max_repeats:
            return _failed(record, found, f"repeatUntil {until!r} still false after {runs} runs")
        time.sleep(float(stage.repeat_period or 0))


def _failed(record: dict[str, Any], found: dict[str, str], message: str) -> _Run:
    """A run whose command succeeded but whose stage fails (its repeat condition)."""
    record["status"] = "failed"
    return _Run("failed", record, found, message)


def _run_once(
    command: str,
    workdir: Path,
    stage: Stage,
    record: dict[str, Any],
    clock: Callable[[], float],
) -> tuple[str, dict[str, str], str]:
    """One process; fills `record` with its exit, times and output tails."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        record["startTime"] = clock()
        try:
            process = subprocess.Popen(
                ["/bin/sh", "-c", command],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, to stop all of it
            )
        except OSError as exc:
            record.update(
                endTime=clock(), exitStatus=None, status="failed", stdOut="", stdErr=str(exc)
            )
            record["runTime"] = record["endTime"] - record["startTime"]
            return "failed", {}, f"cannot start: {exc.strerror or exc}"
        timed_out = False
        try:
            code = process.wait(timeout=stage.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            code = _stop(process)
        record["endTime"] = clock()
        record["runTime"] = record["endTime"] - record["startTime"]
        record["exitStatus"] = code
        stdout_head = _head(out)
        record["stdOut"] = _tail(out)
        record["stdErr"] = _tail(err)
    if timed_out:
        status, message = "timeout", f"ran longer than its timeout of {stage.timeout} s"
    elif code < 0:
        status, message = "failed", f"killed by signal {_signal_name(-code)}"
    elif code != 0:
        status, message = "failed", f"exit status {code}"
    else:
        status, message = "done", ""
    record["status"] = status
    found = stage.extract_variables(stdout_head) if status == "done" else {}
    return status, found, message


def _stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM to the command's process group, SIGKILL if it is still there after a grace."""
    for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            return process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
    return process.wait()


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return str(number)


def _head(handle: IO[bytes]) -> str:
    handle.seek(0)
    return handle.read(MATCH_BYTES).decode("utf-8", errors="replace")


def _tail(handle: IO[bytes]) -> str:
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - 4 * TAIL_CHARS))
    return handle.read().decode("utf-8", errors="replace")[-TAIL_CHARS:]


def _substitute_plain(text: str, variables: Mapping[str, Any]) -> str:
    """`$name`/`${name}` replaced by the bare value: `workingDir` is a path, not shell."""
    out = text
    for ref in reversed(variable_references(text)):
        if ref.name in variables:
            value = str(variables[ref.name])
            out = out[: ref.start] + value + out[ref.start + len(ref.text) :]
    return out


# ---------------------------------------------------------------------------
# the executor


@register
class RunWorkflow(Executor):
    """`workflow` actions: run the job, record it; a job that did not finish fails the action."""

    kind = "workflow"

    def __init__(self, ctx: ExecContext) -> None:
        super().__init__(ctx)
        if ctx.workflows is None:  # problems in the files are `policyd check`'s to report
            ctx.workflows, _ = load_workflows(ctx.config.root, ctx.config.workflow_globs)

    def locations(self, step: Step) -> tuple[str, ...]:
        return ()

    def execute(self, step: Step) -> Result:
        name = str(step.get("workflow"))
        workflow = (self.ctx.workflows or {}).get(name)
        if workflow is None:
            raise ActionFailed(
                f"workflow {name!r} is not defined by the site's workflow files "
                "(`policyd check` lists their problems)",
                retryable=False,
            )
        with self.ctx.engine.connect() as conn:
            try:
                facts = cat.find_file(conn, step.get("experiment"), step.get("file"))
            except cat.NoSuchFile as exc:
                raise ActionFailed(str(exc), retryable=False) from None
            replicas = cat.file_replicas(conn, facts.id)
            attempt = conn.execute(
                select(actions.c.attempts).where(
                    actions.c.plan_id == step.plan_id, actions.c.action_id == step.id
                )
            ).scalar()
        job = job_id(step.plan_id, step.id)
        variables: dict[str, Any] = {
            **(step.get("args") or {}),
            "id": job,
            "experimentName": facts.experiment,
            "experimentFilePath": facts.path,
            "fileSize": "" if facts.size is None else facts.size,
            "md5Sum": facts.md5 or "",
            "station": facts.station or "",
            "filePath": str(self._input_path(facts, replicas)),
        }
        now = self.ctx.now()
        row: dict[str, Any] = {
            "id": job,
            "workflow": name,
            "rule": step.get("rule"),
            "file_id": facts.id,
            "content": None,  # set when the job ends: until then it counts as not run
            "status": "running",
            "stage": None,
            "submitted_at": now,
            "started_at": now,
            "ended_at": None,
            "attempts": attempt or 1,
            "variables": variables,
            "stages": {},
        }
        self._start(step, row)

        def progress(stage: str, records: dict[str, dict[str, Any]]) -> None:
            with self.ctx.engine.begin() as conn:
                put_job(conn, {"id": job, "stage": stage, "stages": records})

        root = self.ctx.config.root
        outcome = run_job(workflow, variables, root=root, clock=self.ctx.now, progress=progress)
        row.update(
            stage=outcome.stage,
            ended_at=outcome.ended_at,
            variables=outcome.variables,
            stages=outcome.stages,
            content=content_of(facts.md5, facts.size, facts.modified),
            status=outcome.status,
        )
        if outcome.status == "done":
            return Result({"job": row, "job_id": job}, f"job {job} done")
        if row["attempts"] < self.ctx.config.retry.attempts:
            row.update(status="pending", content=None)  # the runner tries it again
        with self.ctx.engine.begin() as conn:
            put_job(conn, row)
        raise ActionFailed(failure_message(name, job, outcome))

    def record(self, conn: Connection, step: Step, result: Result) -> None:
        put_job(conn, result.facts["job"])

    def _start(self, step: Step, row: dict[str, Any]) -> None:
        """The job's row, visible while it runs, with its ledger event.

        The fingerprint counts `jobs` rows and the row is written outside the runner's
        transaction, so the event carries the row's fingerprint difference: `apply PLAN`
        run again after a crash still accepts the catalog. A job of this workflow and
        file that an earlier apply left running or pending (it stopped, and this plan
        runs the file again) is marked `aborted`.
        """
        with self.ctx.engine.begin() as conn:
            conn.execute(  # first a write: on SQLite that takes the lock before the reads
                update(jobs)
                .where(
                    jobs.c.workflow == row["workflow"],
                    jobs.c.file_id == row["file_id"],
                    jobs.c.id != row["id"],
                    jobs.c.status.in_(("running", "pending")),
                    jobs.c.content.is_(None),
                )
                .values(status="aborted", ended_at=row["started_at"])
            )
            before = fingerprint.aggregates(conn, row["file_id"])
            put_job(conn, row)
            after = fingerprint.aggregates(conn, row["file_id"])
            delta = [a - b for a, b in zip(after, before, strict=True)]
            ledger.append(
                conn,
                "job_started",
                at=row["started_at"],
                plan_id=step.plan_id,
                action_id=step.id,
                actor="apply",
                payload={
                    "kind": step.kind,
                    "rule": step.get("rule"),
                    "experiment": step.get("experiment"),
                    "file": step.get("file"),
                    "workflow": row["workflow"],
                    "job": row["id"],
                    "attempt": row["attempts"],
                    "delta": delta,
                },
            )

    def _input_path(self, facts: cat.FileFacts, replicas: Mapping[str, cat.ReplicaFacts]) -> Path:
        """The verified replica on the first `file://` location in config order."""
        for name, location in self.ctx.config.locations.items():
            replica = replicas.get(name)
            root = location.root_path
            if root is None or replica is None or replica.state != "verified":
                continue
            store = LocalStore(name, root)  # a path the stage's processes can open
            if not store.exists(replica.path):
                raise ActionFailed(
                    f"the verified replica of {facts.experiment}:{facts.path} on {name} "
                    f"({store.path(replica.path)}) is not there; the job was not started"
                )
            return store.path(replica.path)
        raise ActionFailed(
            f"{facts.experiment}:{facts.path} has no verified replica on a file:// location "
            "for the workflow to read",
            retryable=False,
        )


def failure_message(name: str, job: str, outcome: JobOutcome) -> str:
    """What the ledger, the apply summary and `policyd jobs` say about a job that failed."""
    text = f"workflow {name} job {job}: stage {outcome.stage} {outcome.status}"
    if outcome.message:
        text += f" ({outcome.message})"
    record = outcome.stages.get(outcome.stage or "", {})
    errors = [c.get("stdErr", "") for c in record.get("childProcesses", {}).values()]
    last = next((e.strip().splitlines()[-1] for e in errors if e.strip()), "")
    return f"{text}: {last[-300:]}" if last else text


def put_job(conn: Connection, row: Mapping[str, Any]) -> None:
    """Update a job's row with `row`'s columns, or insert it (a retry keeps its row)."""
    values = {k: v for k, v in row.items() if k != "id"}
    if not conn.execute(update(jobs).where(jobs.c.id == row["id"]).values(**values)).rowcount:
        conn.execute(jobs.insert().values(**row))


# ---------------------------------------------------------------------------
# reading jobs back (`policyd jobs`)


@dataclass
class JobView:
    """A job as `policyd jobs` shows it: its row, with the file's names."""

    id: str
    workflow: str
    status: str
    experiment: str | None
    file: str | None
    rule: str | None
    content: str | None
    stage: str | None
    submitted_at: float
    started_at: float | None
    ended_at: float | None
    attempts: int
    variables: dict[str, Any]
    stages: dict[str, Any]

    @property
    def took(self) -> float | None:
        """Seconds from start to end, once it ended."""
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def list_jobs(
    conn: Connection,
    *,
    status: str | None = None,
    workflow: str | None = None,
    prefix: str | None = None,
) -> list[JobView]:
    """Jobs oldest first; `prefix` keeps those whose id starts with it."""
    query = (
        select(jobs, experiments.c.name.label("experiment"), files.c.path.label("path"))
        .outerjoin(files, files.c.id == jobs.c.file_id)
        .outerjoin(experiments, experiments.c.id == files.c.experiment_id)
        .order_by(jobs.c.submitted_at, jobs.c.id)
    )
    if status is not None:
        query = query.where(jobs.c.status == status)
    if workflow is not None:
        query = query.where(jobs.c.workflow == workflow)
    if prefix is not None:
        query = query.where(jobs.c.id.startswith(prefix, autoescape=True))
    return [
        JobView(
            r.id,
            r.workflow,
            r.status,
            r.experiment,
            r.path,
            r.rule,
            r.content,
            r.stage,
            r.submitted_at,
            r.started_at,
            r.ended_at,
            r.attempts,
            r.variables or {},
            r.stages or {},
        )
        for r in conn.execute(query)
    ]


def job_text(view: JobView) -> str:
    """`policyd jobs show`: the job, its variables, and each stage with its runs."""

    def when(start: float | None, end: float | None) -> str:
        if start is None:
            return ""
        text = iso(round(start))
        return f"{text}, took {format_duration(end - start)}" if end is not None else text

    lines = [
        f"job {view.id}: {view.status} (attempt {view.attempts})",
        f"  workflow {view.workflow}, rule {view.rule or '-'}",
        f"  file {view.experiment}:{view.file}, content {view.content or '-'}",
        f"  started {when(view.started_at, view.ended_at) or '-'}",
        "variables:",
        *(f"  {name} = {value}" for name, value in sorted(view.variables.items())),
    ]
    for key, stage in view.stages.items():
        status = stage.get("status", "")
        message = f" ({stage['message']})" if stage.get("message") else ""
        lines.append(f"stage {key}: {status}{message}")
        for child in stage.get("childProcesses", {}).values():
            runs = f", {child['runs']} runs" if child.get("runs") else ""
            of = f" for {child['filePath']}" if child.get("filePath") else ""
            lines.append(
                f"  run {child.get('childProcessNumber')}{of}: {child.get('status')}, "
                f"exit {child.get('exitStatus')}{runs}, "
                f"{when(child.get('startTime'), child.get('endTime'))}"
            )
            lines.append(f"    $ {child.get('command')}")
            for label, key_ in (("stdout", "stdOut"), ("stderr", "stdErr")):
                text = (child.get(key_) or "").rstrip("\n")
                if text:
                    lines.append(f"    {label}:")
                    lines.extend(f"      {line}" for line in text.splitlines())
        if "childProcesses" not in stage:
            lines.append(f"    $ {stage.get('command')}")
    return "\n".join(lines)
