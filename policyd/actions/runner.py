"""The runner: a plan's DAG carried out with bounded parallelism, retries and a ledger.

Every transition of every action (planned, running, done, failed, suspended, refused)
is written to the `actions` table and the ledger before and after its step, in the
transaction of the catalog change it describes. That is what makes `apply` resumable
after a crash anywhere (kill -9 included): a `running` action whose transaction did
not commit is simply run again (a copy first removes the temporary file the
interrupted one left; its target is only recorded after verification), a `done` one
is never redone.

Copies and verifies run in worker threads (`--parallel N`, and at most `parallel` of
a location's config at once per location); deletes and expires run one at a time in
the runner's own transaction, under the file's lock. An executor that batches (Globus,
whose one task carries many files) gets the ready actions on the same locations in one
call, in one worker, each action still recorded on its own. A failure is retried with
exponential backoff and jitter (`retry:` in the site config) and, after `attempts`
tries, the action is `suspended`: the next plan lists it, and `apply` does not run
what waits for it.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.engine import Connection

from policyd.actions import acl_posix, globus, removal, stores, transfer  # noqa: F401  (they register their executors)
from policyd.actions.base import ActionFailed, Executor, Result, Step, executor_class
from policyd.actions.context import ExecContext
from policyd.audit import ledger
from policyd.catalog.schema import actions as actions_table
from policyd.catalog.schema import experiments, files
from policyd.planner import fingerprint

log = logging.getLogger("policyd.apply")

_SET_STATE = (
    update(actions_table)
    .where(
        actions_table.c.plan_id == bindparam("b_plan"),
        actions_table.c.action_id == bindparam("b_action"),
    )
    .values(
        state=bindparam("state"),
        attempts=bindparam("attempts"),
        last_error=bindparam("last_error"),
        not_before=bindparam("not_before"),
        updated_at=bindparam("updated_at"),
    )
)

FINAL = frozenset({"done", "suspended", "refused"})
#: Executed actions waiting for the settler, at most: no more start while it catches up
#: (one settle, and the transaction after it, stay short).
MAX_UNSETTLED = 1000


def plan_id_of(plan_bytes: bytes) -> str:
    """A plan's identity: the hash of its file, so re-running the same plan resumes it."""
    return "p-" + hashlib.sha256(plan_bytes).hexdigest()[:24]


@dataclass
class ActionState:
    step: Step
    state: str = "planned"
    attempts: int = 0
    not_before: float = 0.0
    last_error: str | None = None


@dataclass
class RunReport:
    plan_id: str
    counts: Counter[str] = field(default_factory=Counter)
    bytes_copied: int = 0
    bytes_freed: int = 0
    problems: list[str] = field(default_factory=list)
    resumed: int = 0

    @property
    def ok(self) -> bool:
        return not (self.counts["failed"] or self.counts["suspended"] or self.counts["refused"])


Progress = Callable[[str, Step, Result | None], None]


class Runner:
    def __init__(
        self, ctx: ExecContext, plan: dict[str, Any], progress: Progress | None = None
    ) -> None:
        self.ctx = ctx
        self.plan = plan
        self.progress = progress
        self.report = RunReport(ctx.plan_id)
        self.states: dict[str, ActionState] = {}
        self.executors: dict[type[Executor], Executor] = {}
        retry = ctx.config.retry
        self.max_attempts = retry.attempts
        self.backoff = float(retry.backoff)
        self.max_backoff = float(retry.max_backoff)
        self.random = random.Random(ctx.plan_id)
        self._entries: list[ledger.Entry] | None = None
        self._states: list[dict[str, Any]] | None = None
        self._scopes: dict[tuple[str, str | None], tuple[int | None, int | None]] = {}
        self._orphans_unchecked = True
        self.dependents: dict[str, list[ActionState]] = {}
        self.order: list[ActionState] = []
        self.position: dict[str, int] = {}
        self._executor_of: dict[str, Executor] = {}

    # ---- the actions table and the ledger

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """A catalog transaction; the ledger events and action states gathered in it
        (`_event`, `_set_state`) are written at its end, in one statement each."""
        with self.ctx.engine.begin() as conn:
            self._entries, self._states = [], []
            try:
                yield conn
                ledger.append_all(conn, self._entries)
                if self._states:
                    conn.execute(_SET_STATE, self._states)
            finally:
                self._entries = self._states = None

    def _event(self, event: str, step: Step, **payload: Any) -> None:
        assert self._entries is not None, "events are written in a runner transaction"
        body = {
            "kind": step.kind,
            "rule": step.get("rule"),
            "experiment": step.get("experiment"),
            "file": step.get("file"),
            "target": step.get("target"),
            **payload,
        }
        self._entries.append(
            ledger.Entry(
                event,
                at=self.ctx.now(),
                plan_id=self.ctx.plan_id,
                action_id=step.id,
                actor="apply",
                payload=body,
            )
        )

    def _set_state(self, state: ActionState) -> None:
        assert self._states is not None, "states are written in a runner transaction"
        self._states.append(
            {
                "b_plan": self.ctx.plan_id,
                "b_action": state.step.id,
                "state": state.state,
                "attempts": state.attempts,
                "last_error": state.last_error,
                "not_before": state.not_before or None,
                "updated_at": self.ctx.now(),
            }
        )

    def load(self) -> None:
        """Record a new plan's actions as `planned`, or take up a started one's states."""
        steps = [Step(self.ctx.plan_id, a) for a in self.plan["actions"]]
        with self.ctx.engine.begin() as conn:
            known = {
                row.action_id: row
                for row in conn.execute(
                    select(actions_table).where(actions_table.c.plan_id == self.ctx.plan_id)
                )
            }
            now = self.ctx.now()
            new_rows = []
            for step in steps:
                row = known.get(step.id)
                state = ActionState(step)
                if row is not None:
                    state.state, state.attempts = row.state, row.attempts
                    state.last_error = row.last_error
                    if state.state == "failed" and state.attempts < self.max_attempts:
                        state.state = "planned"
                    self.report.resumed += state.state in FINAL
                else:
                    new_rows.append(
                        {
                            "plan_id": self.ctx.plan_id,
                            "action_id": step.id,
                            "kind": step.kind,
                            "rule": step.get("rule"),
                            "experiment": step.get("experiment"),
                            "file": step.get("file"),
                            "target": step.get("target"),
                            "state": "planned",
                            "attempts": 0,
                            "updated_at": now,
                            "payload": step.action,
                        }
                    )
                self.states[step.id] = state
            for state in self.states.values():
                for dep in state.step.get("after", []):
                    self.dependents.setdefault(dep, []).append(state)
            # the largest copies first: the workers then end together on small files,
            # not one of them alone on the last large one
            self.order = sorted(self.states.values(), key=_largest_copies_first)
            self.position = {step.id: index for index, step in enumerate(steps)}
            if new_rows:
                conn.execute(insert(actions_table), new_rows)
                ledger.append(
                    conn,
                    "planned",
                    at=now,
                    plan_id=self.ctx.plan_id,
                    actor="apply",
                    payload={
                        "actions": len(new_rows),
                        "catalog_fingerprint": self.plan.get("catalog_fingerprint"),
                        "summary": self.plan.get("summary"),
                    },
                )
        self._clean_interrupted()

    def _clean_interrupted(self) -> None:
        """Temporary files of copies a crash interrupted (state `running`): this plan's,
        which then run again, and other plans' too, or a plan that went stale after
        its crash would leave them for good. None of them is being written: this
        apply holds the catalog lock."""
        for state in self.states.values():
            if state.state == "running" and state.step.kind == "copy":
                self._remove_temp(state.step)
            if state.state == "running":
                state.state = "planned"
        with self.ctx.engine.connect() as conn:
            others = conn.execute(
                select(actions_table.c.plan_id, actions_table.c.payload).where(
                    actions_table.c.state == "running",
                    actions_table.c.kind == "copy",
                    actions_table.c.plan_id != self.ctx.plan_id,
                )
            ).all()
        for plan_id, action in others:
            self._remove_temp(Step(plan_id, action))

    def _remove_temp(self, step: Step) -> None:
        """Best effort: a copy that runs again writes its temporary file afresh."""
        try:
            store = self.ctx.store(step.get("target"))
            removed = store.remove_temp(step.get("path"), transfer.copy_tag(step))
        except (ActionFailed, OSError) as exc:
            log.warning("cannot remove what the interrupted %s left: %s", step.id, exc)
            return
        if removed:
            log.info("removed what the interrupted %s of %s left", step.id, step.plan_id)

    # ---- scheduling

    def executor(self, step: Step) -> Executor:
        """The executor for this action's kind and the URL schemes of its locations."""
        found = self._executor_of.get(step.id)
        if found is None:
            found = self._executor_of[step.id] = self._find_executor(step)
        return found

    def _find_executor(self, step: Step) -> Executor:
        locations = self.ctx.config.locations
        schemes = frozenset(
            locations[name].scheme
            for name in (step.get("source"), step.get("target"))
            if name in locations
        )
        cls = executor_class(step.kind, schemes)
        if cls is None:
            where = ", ".join(sorted(schemes)) or "no location"
            raise ActionFailed(f"no executor for {step.kind} actions on {where}", retryable=False)
        if cls not in self.executors:
            self.executors[cls] = cls(self.ctx)
        return self.executors[cls]

    def _blocked_by(self, state: ActionState) -> str | None:
        for dep in state.step.get("after", []):
            dep_state = self.states.get(dep)
            if dep_state is None or dep_state.state in ("suspended", "refused", "waiting"):
                return dep
            if dep_state.state == "failed" and dep_state.attempts >= self.max_attempts:
                return dep
        return None

    def _ready(self, state: ActionState, now: float) -> bool:
        if state.state != "planned" or state.not_before > now:
            return False
        return all(
            self.states[d].state == "done" for d in state.step.get("after", []) if d in self.states
        )

    def run(self) -> RunReport:
        self.load()
        parallel = max(1, self.ctx.options.parallel)
        # Each worker has its next action waiting: it starts it as it finishes one,
        # without waiting for this thread, which may be recording a batch. A location's
        # own `parallel` caps what is handed over, so it caps what runs at once too.
        depth = 2 * parallel
        limits = {
            name: loc.parallel for name, loc in self.ctx.config.locations.items() if loc.parallel
        }
        busy: Counter[str] = Counter()
        running: dict[Future[list[Result | ActionFailed]], list[ActionState]] = {}
        # executed, waiting for the settler; then the batch it is settling
        finished: list[tuple[ActionState, Result]] = []
        settling: Future[list[ActionFailed | None]] | None = None
        settling_batch: list[tuple[ActionState, Result]] = []
        # outcomes known without work (`Executor.known`), started, to be recorded
        known: list[tuple[ActionState, Result]] = []
        with (
            ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="policyd-io") as pool,
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="policyd-settle") as settler,
        ):
            while True:
                now = self.ctx.now()
                self._skip_orphans()
                pending = [s for s in self.order if s.state == "planned"]
                if not (pending or running or finished or settling or known):
                    break
                starting: list[tuple[Executor, list[ActionState]]] = []
                for state in pending:
                    if len(running) + len(starting) >= depth or len(finished) >= MAX_UNSETTLED:
                        break
                    if not self._ready(state, now):
                        continue
                    try:
                        executor = self.executor(state.step)
                    except ActionFailed as exc:
                        self._finish_failure(state, exc)
                        continue
                    outcome = executor.known(state.step)
                    if outcome is not None:
                        self._start(state)
                        known.append((state, outcome))
                        continue
                    used = executor.locations(state.step)
                    if any(busy[loc] >= limits.get(loc, depth) for loc in used):
                        continue
                    if executor.locked:
                        self._run_locked(executor, state)
                        continue
                    group = self._batch(executor, state, pending, now)
                    for member in group:
                        self._start(member)
                    busy.update(used)
                    starting.append((executor, group))
                recorded = bool(known)
                if known or starting:
                    started = [m for _, group in starting for m in group]
                    done = self._record_started(known, started)
                    known = self._known_after(done)
                    for executor, group in starting:
                        running[pool.submit(_execute, executor, [m.step for m in group])] = group
                if settling is None and finished:
                    settling_batch, finished = finished, []
                    settling = settler.submit(_settle, [r for _, r in settling_batch])
                futures: list[Future[Any]] = [*running, *([settling] if settling else [])]
                if futures:
                    completed, _ = wait(
                        futures, timeout=self._wait_time(now), return_when=FIRST_COMPLETED
                    )
                    for future in completed:
                        if future is settling:
                            done = self._record_batch(settling_batch, settling.result())
                            known += self._known_after(done)
                            settling, settling_batch = None, []
                            continue
                        group = running.pop(future)
                        busy.subtract(self.executor(group[0].step).locations(group[0].step))
                        finished += self._outcomes(group, future)
                elif not recorded and not any(self._ready(s, self.ctx.now()) for s in pending):
                    time.sleep(max(0.0, min(self._wait_time(self.ctx.now()), 1.0)))
        return self.report

    def _wait_time(self, now: float) -> float:
        waiting = [
            s.not_before - now
            for s in self.states.values()
            if s.state == "planned" and s.not_before > now
        ]
        return max(0.01, min(waiting)) if waiting else 0.5

    def _skip_orphans(self) -> None:
        """Actions waiting for one that will not happen in this apply are left planned.
        Only an action that ended suspended or refused makes new ones: the walk over
        every action waits for that (it ran once per completion, for every action)."""
        while self._orphans_unchecked:
            self._orphans_unchecked = False
            for state in self.states.values():
                if state.state == "planned":
                    dep = self._blocked_by(state)
                    if dep is not None:
                        state.state = "waiting"
                        self._orphans_unchecked = True  # its own dependents, next pass
                        self.report.counts["waiting"] += 1
                        self.report.problems.append(f"{state.step.id} not run: it waits for {dep}")

    def _start(self, state: ActionState) -> None:
        state.state = "running"
        state.attempts += 1

    def _record_running(self, states: list[ActionState]) -> None:
        """The `running` events of the actions about to start, in one transaction, before
        any of them touches storage (a resumed apply removes what they leave)."""
        with self._transaction():
            for state in states:
                self._event("running", state.step, attempt=state.attempts)
                self._set_state(state)

    def _mark_running(self, state: ActionState) -> None:
        self._start(state)
        self._record_running([state])

    def _run_locked(self, executor: Executor, state: ActionState) -> None:
        self._mark_running(state)
        try:
            with self._transaction() as conn:
                scope = self._scope(conn, state.step)
                before = fingerprint.aggregates(conn, *scope)
                result = executor.apply(conn, state.step)
                self._done(state, result, _delta(conn, scope, before))
        except ActionFailed as exc:
            self._finish_failure(state, exc)
            return
        except Exception as exc:  # an executor bug or a lost database: never half-recorded
            self._finish_failure(state, ActionFailed(f"{type(exc).__name__}: {exc}"))
            return
        self._after_done(state, result)

    def _batch(
        self, executor: Executor, state: ActionState, pending: list[ActionState], now: float
    ) -> list[ActionState]:
        """`state`, and for an executor that batches, the other ready actions of its kind
        on the same locations (so the same executor), up to `executor.batch`, in the
        plan's order."""
        group = [state]
        used = executor.locations(state.step)
        for other in pending:
            if len(group) >= executor.batch:
                break
            if (
                other is not state
                and other.step.kind == state.step.kind
                and self._ready(other, now)
                and executor.locations(other.step) == used
            ):
                group.append(other)
        return sorted(group, key=lambda member: self.position[member.step.id])

    def _outcomes(
        self, group: list[ActionState], future: Future[list[Result | ActionFailed]]
    ) -> list[tuple[ActionState, Result]]:
        """The executed actions of a finished worker call, for the settler; the failed
        ones are recorded as failures now."""
        try:
            outcomes = future.result()
        except ActionFailed as exc:
            outcomes = [exc] * len(group)
        except Exception as exc:  # an executor bug: the failure is recorded and retried
            outcomes = [ActionFailed(f"{type(exc).__name__}: {exc}")] * len(group)
        executed = []
        for state, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, ActionFailed):
                self._finish_failure(state, outcome)
            else:
                executed.append((state, outcome))
        return executed

    def _record_batch(
        self,
        batch: list[tuple[ActionState, Result]],
        settled: list[ActionFailed | None],
    ) -> list[ActionState]:
        """Record settled actions, all in one transaction (each with its own events and
        fingerprint difference). When one of them cannot be recorded the transaction is
        rolled back and each is recorded on its own, so the others still are. Returns
        the actions now done."""
        ready: list[tuple[ActionState, Result]] = []
        for (state, result), error in zip(batch, settled, strict=True):
            if error is None:
                ready.append((state, result))
            else:
                self._finish_failure(state, error)
        if not ready:
            return []
        try:
            with self._transaction() as conn:
                problems = [self._record(conn, state, result) for state, result in ready]
        except Exception:
            for state, _ in ready:
                state.state = "running"
            for state, result in ready:
                self._record_one(state, result)
            return [state for state, _ in ready if state.state == "done"]
        for (state, result), problem in zip(ready, problems, strict=True):
            if problem is None:
                self._after_done(state, result)
            else:
                self._finish_failure(state, problem)
        return [state for state, _ in ready if state.state == "done"]

    def _known_after(self, done: list[ActionState]) -> list[tuple[ActionState, Result]]:
        """The actions that `done` ones made ready and whose outcome needs no work
        (`Executor.known`: the verify after a copy), started: the next transaction
        records them, without a worker, even while every worker is busy."""
        now = self.ctx.now()
        known: list[tuple[ActionState, Result]] = []
        for state in done:
            for dependent in self.dependents.get(state.step.id, ()):
                if not self._ready(dependent, now):
                    continue
                try:
                    outcome = self.executor(dependent.step).known(dependent.step)
                except ActionFailed:
                    continue  # the main loop records that
                if outcome is not None:
                    self._start(dependent)
                    known.append((dependent, outcome))
        return known

    def _record_started(
        self, known: list[tuple[ActionState, Result]], started: list[ActionState]
    ) -> list[ActionState]:
        """One transaction: the outcomes known without work (their `running` and `done`
        events) and the `running` events of the actions about to be handed to workers,
        before any of them touches storage (a resumed apply removes what they leave).
        Returns the actions now done. When a known outcome cannot be recorded, each is
        recorded on its own, as in `_record_batch`."""
        try:
            with self._transaction() as conn:
                problems = [self._record(conn, s, result, known=True) for s, result in known]
                for state in started:
                    self._event("running", state.step, attempt=state.attempts)
                    self._set_state(state)
        except Exception:
            if not known:
                raise  # the catalog is gone: nothing may start
            for state, _ in known:
                state.state = "running"
            for state, result in known:
                self._record_one(state, result, known=True)
            self._record_running(started)
            return [state for state, _ in known if state.state == "done"]
        for (state, result), problem in zip(known, problems, strict=True):
            if problem is None:
                self._after_done(state, result)
            else:
                self._finish_failure(state, problem)
        return [state for state, _ in known if state.state == "done"]

    def _record_one(self, state: ActionState, result: Result, *, known: bool = False) -> None:
        try:
            with self._transaction() as conn:
                problem = self._record(conn, state, result, known=known)
            if problem is not None:
                raise problem
        except ActionFailed as exc:
            self._finish_failure(state, exc)
            return
        except Exception as exc:  # keep going: the failure is recorded and retried
            self._finish_failure(state, ActionFailed(f"{type(exc).__name__}: {exc}"))
            return
        self._after_done(state, result)

    def _record(
        self, conn: Connection, state: ActionState, result: Result, *, known: bool = False
    ) -> ActionFailed | None:
        """An executed action's catalog change and its `done` event; `known`: an outcome
        known without work, its `running` and `done` events alone. A copy that found its
        source corrupt records that and comes back as the failure it is."""
        if known:
            self._event("running", state.step, attempt=state.attempts)
            self._done(state, result, None)
            return None
        problem = transfer.mismatch_error(result)
        scope = self._scope(conn, state.step)
        before = fingerprint.aggregates(conn, *scope)
        self.executor(state.step).record(conn, state.step, result)
        delta = _delta(conn, scope, before)
        if problem is None:
            self._done(state, result, delta)
        elif any(delta):
            self._event("recorded", state.step, delta=delta, note=result.note)
        return problem

    def _scope(self, conn: Connection, step: Step) -> tuple[int | None, int | None]:
        """The file and experiment an action changes, for its fingerprint difference
        (remembered: a file's ids do not change while the apply holds the catalog)."""
        key = (step.get("experiment"), step.get("file") or None)
        scope = self._scopes.get(key)
        if scope is None:
            scope = _scope(conn, step)
            if scope != (None, None):
                self._scopes[key] = scope
        return scope

    def _done(self, state: ActionState, result: Result, delta: list[int] | None) -> None:
        """Its `done` event, with what it changed in the fingerprint sums (None: an
        outcome known without work, which changed nothing)."""
        state.state = "done"
        state.last_error = None
        facts = _facts(result)
        if delta is not None:
            facts["delta"] = delta
        self._event("done", state.step, bytes=result.bytes, note=result.note, **facts)
        self._set_state(state)

    def _after_done(self, state: ActionState, result: Result) -> None:
        self.report.counts["done"] += 1
        if state.step.kind == "copy":
            self.report.bytes_copied += result.bytes
        elif state.step.kind in ("delete", "expire"):
            self.report.bytes_freed += result.bytes
        if self.progress is not None:
            self.progress("done", state.step, result)

    def _finish_failure(self, state: ActionState, exc: ActionFailed) -> None:
        state.last_error = exc.message
        if state.attempts == 0:
            state.attempts = 1
        if exc.refused:
            state.state, event = "refused", "refused"
        elif not exc.retryable or state.attempts >= self.max_attempts:
            state.state, event = "suspended", "suspended"
        else:
            state.state, event = "planned", "failed"
            delay = min(self.max_backoff, self.backoff * 2 ** (state.attempts - 1))
            state.not_before = self.ctx.now() + delay * (0.5 + self.random.random() / 2)
        with self._transaction():
            self._event(event, state.step, attempt=state.attempts, error=exc.message)
            self._set_state(state)
        if state.state != "planned":
            self._orphans_unchecked = True
        label = {"planned": "failed", "suspended": "suspended", "refused": "refused"}[state.state]
        self.report.counts["retried" if state.state == "planned" else label] += 1
        step = state.step
        where = f"{step.get('experiment')}:{step.get('file')}"
        message = f"{step.id} {step.kind} {where}: {exc.message}"
        log.warning("%s (%s)", message, label)
        if state.state != "planned":
            self.report.problems.append(f"{message} [{label}]")
        if self.progress is not None:
            self.progress(label, state.step, None)


def _largest_copies_first(state: ActionState) -> int:
    return -(state.step.get("bytes") or 0) if state.step.kind == "copy" else 0


def _settle(results: list[Result]) -> list[ActionFailed | None]:
    """Make the local copies among `results` durable and put them in place, all at
    once (`stores.settle`); None for the results that need nothing."""
    landed = [r.landed for r in results if r.landed is not None]
    errors = iter(stores.settle(landed))
    return [next(errors) if r.landed is not None else None for r in results]


def _execute(executor: Executor, steps: list[Step]) -> list[Result | ActionFailed]:
    """One action's work, or a batch's: an outcome per action."""
    if executor.batch > 1:
        return executor.execute_batch(steps)
    return [executor.execute(steps[0])]


def _scope(conn: Connection, step: Step) -> tuple[int | None, int | None]:
    """The file and experiment an action changes, for its fingerprint difference."""
    if not step.get("file"):
        experiment_id = conn.execute(
            select(experiments.c.id).where(experiments.c.name == step.get("experiment"))
        ).scalar()
        return None, experiment_id
    found = conn.execute(
        select(files.c.id, files.c.experiment_id)
        .join(experiments, experiments.c.id == files.c.experiment_id)
        .where(experiments.c.name == step.get("experiment"), files.c.path == step.get("file"))
    ).first()
    return (found[0], found[1]) if found is not None else (None, None)


def _delta(conn: Connection, scope: tuple[int | None, int | None], before: list[int]) -> list[int]:
    after = fingerprint.aggregates(conn, *scope)
    return [a - b for a, b in zip(after, before, strict=True)]


def _facts(result: Result) -> dict[str, Any]:
    return {
        k: v
        for k, v in result.facts.items()
        if isinstance(v, str | int | float | bool | type(None))
    }
