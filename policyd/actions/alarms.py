"""What `apply` records once its actions are done: alarm states, notices, notifications.

The plan's `alarms` list holds only state changes (raise, clear) and its `notices`
list the notices not sent yet (spec/rules.md section 5, docs/planning.md). After the
runner, `record_alarms_and_notices`:

1. records each planned alarm change in `alarm_states` and tells the alarm's channels;
2. sends each planned notice and records it in `notices` (its `sent_at` is what lets
   the deletes through once it is D old);
3. re-evaluates the alarm statements of the enabled rules on the catalog as the
   actions left it, because two things the planner needs are not state changes: a
   raised alarm whose clear condition does not hold is re-notified once
   `alarms.repeat` has passed since `last_notified_at`, and for `alarm ... for D` the
   time the condition started to hold is recorded in `condition_since` (and reset
   when it stops), which the planner's alarm pass compares with D;
4. tells `alarms.default_notify` about policyd's own alarms of this plan: replicas a
   verify or a copy found corrupt, and actions the runner suspended.

Every catalog write here is in one transaction with its ledger events (the change
and one `notified` or `notify_failed` event per channel). Messages are sent before
that transaction, so a crash between the two sends again on the re-run rather than
losing the message: alarms and notices are delivered at least once. A failed
delivery never stops apply: it is recorded, reported, and tried again by the next
apply (a notice stays unsent, so its deletes keep waiting; an alarm keeps its old
`last_notified_at`, so it is due again).

`notices` rows are part of the catalog fingerprint, and they are written after the
plan was made: each insert records its fingerprint difference (`delta`, scoped to
the experiment) in its ledger event, as the runner does for actions, so re-running
the same plan file is still accepted. `alarm_states` is not part of the fingerprint.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Final

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.engine import Connection, Row

from policyd.actions.context import ExecContext
from policyd.actions.notify import Message, Notifier, Outcome
from policyd.actions.runner import RunReport
from policyd.audit import ledger
from policyd.catalog.schema import alarm_states, experiments, notices
from policyd.grammar import ast
from policyd.planner import fingerprint
from policyd.planner.engine import alarm_value, condition_holds
from policyd.planner.storage import StorageState
from policyd.rules import ir, model
from policyd.rules.typecheck import expression_text
from policyd.stations.config import SiteConfig
from policyd.units import format_duration, format_size

#: Items listed by name in one message about policyd's own alarms; the rest are counted.
LISTED: Final = 20


class AlarmCheck:
    """Alarm conditions evaluated as the planner's alarm pass does, on the catalog as
    this apply left it (its copies and deletes done, not projected)."""

    def __init__(self, config: SiteConfig, engine: Engine, now: float) -> None:
        storage = StorageState(config, engine, now)
        self.bindings = ir.Bindings(now, config.tzinfo, storage.value)

    def holds(self, expr: ast.Expr) -> bool:
        return condition_holds(expr, self.bindings)

    def clears(self, statement: model.Alarm) -> bool:
        """`clear when E2` holds, or, without one, the alarm's condition no longer does."""
        if statement.clear_when is not None:
            return self.holds(statement.clear_when)
        return not self.holds(statement.when)

    def value(self, expr: ast.Expr) -> str | None:
        """The value of the condition's first function call, shown as the plan shows it."""
        return alarm_value(expr, self.bindings)


def record_alarms_and_notices(
    ctx: ExecContext, plan: dict[str, Any], report: RunReport, notifier: Notifier | None = None
) -> None:
    """Steps 1 to 4 of the module docstring, for one apply of `plan`."""
    step = _AfterRun(ctx, plan, report, notifier or Notifier(ctx.config))
    step.planned_alarms()
    step.planned_notices()
    step.rule_alarms()
    step.own_alarms()


class _AfterRun:
    def __init__(
        self, ctx: ExecContext, plan: dict[str, Any], report: RunReport, notifier: Notifier
    ) -> None:
        self.ctx = ctx
        self.plan = plan
        self.report = report
        self.notifier = notifier
        self.now = ctx.now()
        # Alarms this apply changed from the plan: not re-notified in the same apply.
        self.changed: set[tuple[str, int]] = set()

    @cached_property
    def check(self) -> AlarmCheck:
        return AlarmCheck(self.ctx.config, self.ctx.engine, self.now)

    # ---- 1. the plan's alarm changes

    def planned_alarms(self) -> None:
        for entry in self.plan.get("alarms", []):
            key = (str(entry["rule"]), int(entry["statement"]))
            raising = entry["state"] == "raise"
            row = self._alarm_row(key)
            current = row.state if row is not None else "clear"
            if current == ("raised" if raising else "clear"):
                continue  # an earlier run of this plan (or another apply) recorded it
            self.changed.add(key)
            if raising:
                subject = f"alarm {key[0]} raised ({entry['severity']}): {entry['message']}"
            else:
                subject = f"alarm {key[0]} {entry['message']}"
            message = Message(
                subject,
                _lines(
                    rule=f"{key[0]} (alarm statement {key[1]})",
                    severity=entry["severity"],
                    value=entry["value"],
                    at=_shown(self.now),
                    plan=self.ctx.plan_id,
                ),
                {
                    "event": "alarm",
                    "change": entry["state"],
                    "rule": key[0],
                    "statement": key[1],
                    "severity": entry["severity"],
                    "value": entry["value"],
                    "message": entry["message"],
                    "at": _shown(self.now),
                },
            )
            outcomes = self._send(entry["notify"], message)
            delivered = all(o.ok for o in outcomes)
            # A raised alarm's condition holds since it was first seen to (`for D`), or
            # now; a cleared one's does not hold, until step 3 sees it hold again.
            held_since = row.condition_since if row is not None else None
            values: dict[str, Any] = {
                "state": "raised" if raising else "clear",
                "since": self.now,
                "value": entry["value"],
                "last_notified_at": self.now if delivered else None,
                "condition_since": (held_since or self.now) if raising else None,
            }
            with self.ctx.engine.begin() as conn:
                self._write_alarm(conn, key, values, row is not None)
                self._event(
                    conn,
                    "alarm",
                    {
                        **_about_alarm(key),
                        "change": entry["state"],
                        "severity": entry["severity"],
                        "value": entry["value"],
                        "message": entry["message"],
                    },
                )
                self._notified(conn, outcomes, _about_alarm(key))

    # ---- 2. the plan's notices

    def planned_notices(self) -> None:
        plan_now = _epoch(self.plan["now"])
        for entry in self.plan.get("notices", []):
            rule, name, channel = entry["rule"], entry["experiment"], entry["channel"]
            about = {"about": "notice", "rule": rule, "experiment": name, "channel": channel}
            with self.ctx.engine.connect() as conn:
                experiment_id = conn.execute(
                    select(experiments.c.id).where(experiments.c.name == name)
                ).scalar()
                sent = experiment_id is not None and (
                    conn.execute(
                        select(notices.c.id).where(
                            notices.c.rule == rule,
                            notices.c.experiment_id == experiment_id,
                            notices.c.channel == channel,
                        )
                    ).first()
                    is not None
                )
            if experiment_id is None:
                self.report.problems.append(
                    f"notice of {rule} to {channel} not sent: experiment {name} is no longer "
                    "in the catalog"
                )
                continue
            if sent:
                continue
            # The deletes wait until the notice is D old (engine.notice_wait), D being
            # what the plan put between its `now` and `delete_after`.
            not_before = _shown(self.now + (_epoch(entry["delete_after"]) - plan_now))
            message = Message(
                f"notice: rule {rule} will delete {entry['files']} files "
                f"({format_size(entry['bytes'])}) of experiment {name}, "
                f"not before {not_before}",
                _lines(
                    experiment=name,
                    rule=rule,
                    files=entry["files"],
                    bytes=f"{entry['bytes']} ({format_size(entry['bytes'])})",
                    not_before=not_before,
                    plan=self.ctx.plan_id,
                ),
                {
                    "event": "notice",
                    "rule": rule,
                    "experiment": name,
                    "files": entry["files"],
                    "bytes": entry["bytes"],
                    "delete_after": not_before,
                },
            )
            outcomes = self._send([channel], message)
            with self.ctx.engine.begin() as conn:
                if outcomes[0].ok:
                    before = fingerprint.aggregates(conn, None, experiment_id)
                    conn.execute(
                        insert(notices).values(
                            rule=rule,
                            experiment_id=experiment_id,
                            channel=channel,
                            sent_at=self.now,
                            payload={
                                "files": entry["files"],
                                "bytes": entry["bytes"],
                                "delete_after": not_before,
                                "plan_id": self.ctx.plan_id,
                            },
                        )
                    )
                    after = fingerprint.aggregates(conn, None, experiment_id)
                    delta = [a - b for a, b in zip(after, before, strict=True)]
                    self._event(
                        conn,
                        "notice",
                        {**about, "delete_after": not_before, "delta": delta},
                    )
                self._notified(conn, outcomes, about)

    # ---- 3. conditions that still hold: repeats and `for D`

    def rule_alarms(self) -> None:
        statements = [
            ((rule.name, index), s)
            for rule in self.ctx.rules
            if not rule.disabled
            for index, s in enumerate(rule.statements)
            if isinstance(s, model.Alarm)
        ]
        if not statements:
            return
        with self.ctx.engine.connect() as conn:
            rows = {(row.rule, row.statement): row for row in conn.execute(select(alarm_states))}
        repeat = float(self.ctx.config.alarms.repeat)
        for key, s in statements:
            if key in self.changed:
                continue
            row = rows.get(key)
            if row is not None and row.state == "raised":
                due = row.last_notified_at is None or self.now - row.last_notified_at >= repeat
                if due and not self.check.clears(s):
                    self._repeat(key, s, row)
            elif s.for_ > 0:
                self._track_condition(key, s, row)

    def _repeat(self, key: tuple[str, int], s: model.Alarm, row: Row[Any]) -> None:
        value = self.check.value(s.when)
        text = expression_text(s.when) + (f" ({value})" if value else "")
        message = Message(
            f"alarm {key[0]} still raised ({s.severity}) since {_shown(row.since)}: {text}",
            _lines(
                rule=f"{key[0]} (alarm statement {key[1]})",
                severity=s.severity,
                value=value,
                raised=_shown(row.since),
                repeat=format_duration(float(self.ctx.config.alarms.repeat)),
                at=_shown(self.now),
            ),
            {
                "event": "alarm",
                "change": "repeat",
                "rule": key[0],
                "statement": key[1],
                "severity": s.severity,
                "value": value,
                "message": text,
                "since": _shown(row.since),
                "at": _shown(self.now),
            },
        )
        outcomes = self._send(s.notify, message)
        if not all(o.ok for o in outcomes):
            with self.ctx.engine.begin() as conn:
                self._notified(conn, outcomes, _about_alarm(key))
            return
        with self.ctx.engine.begin() as conn:
            self._write_alarm(conn, key, {"last_notified_at": self.now, "value": value}, True)
            self._event(conn, "alarm", {**_about_alarm(key), "change": "repeat"})
            self._notified(conn, outcomes, _about_alarm(key))

    def _track_condition(self, key: tuple[str, int], s: model.Alarm, row: Row[Any] | None) -> None:
        since = row.condition_since if row is not None else None
        holds = self.check.holds(s.when)
        if holds == (since is not None):
            return
        new_since = self.now if holds else None
        with self.ctx.engine.begin() as conn:
            values: dict[str, Any] = {"condition_since": new_since}
            if row is None:
                values["state"] = "clear"
            self._write_alarm(conn, key, values, row is not None)
            self._event(
                conn,
                "alarm_condition",
                {
                    **_about_alarm(key),
                    "holds": holds,
                    "condition_since": new_since,
                    "for": s.for_,
                },
            )

    # ---- 4. policyd's own alarms

    def own_alarms(self) -> None:
        with self.ctx.engine.connect() as conn:
            events = list(ledger.events(conn, plan_id=self.ctx.plan_id))
        told = {
            seq for e in events if e.event == "policyd_alarm" for seq in e.payload.get("events", [])
        }
        sources = {a["id"]: a.get("source") for a in self.plan["actions"]}
        corrupt: list[str] = []
        suspended: list[str] = []
        seqs: list[int] = []
        for e in events:
            if e.seq in told:
                continue
            p = e.payload
            where = f"{p.get('experiment')}:{p.get('file')}"
            if e.event == "suspended":
                suspended.append(f"{e.action_id} {p.get('kind')} {where}: {p.get('error')}")
            elif e.event == "done" and p.get("kind") == "verify" and p.get("state") == "corrupt":
                corrupt.append(f"{where} on {p.get('target')} (verify {e.action_id})")
            elif e.event == "recorded" and p.get("kind") == "copy":
                # The runner records a copy's catalog change without finishing it only
                # for a checksum mismatch, which marks the copy's source corrupt.
                corrupt.append(f"{where} on {sources.get(e.action_id)} (copy {e.action_id})")
            else:
                continue
            seqs.append(e.seq)
        if not seqs:
            return
        message = Message(
            f"policyd alarm: {len(corrupt)} corrupt replicas, {len(suspended)} suspended actions",
            "\n\n".join(
                f"{title}:\n{_listing(items)}"
                for title, items in (
                    ("corrupt replicas", corrupt),
                    ("suspended actions", suspended),
                )
                if items
            )
            + f"\n\nplan: {self.ctx.plan_id}",
            {
                "event": "policyd_alarm",
                "severity": "critical" if corrupt else "warning",
                "corrupt": corrupt[:LISTED],
                "suspended": suspended[:LISTED],
                "counts": {"corrupt": len(corrupt), "suspended": len(suspended)},
                "at": _shown(self.now),
            },
        )
        channels = self.ctx.config.alarms.default_notify
        if not channels:
            self.report.problems.append(
                f"{message.subject} (alarms.default_notify names no channel: in the ledger only)"
            )
        outcomes = self._send(channels, message)
        with self.ctx.engine.begin() as conn:
            self._event(
                conn,
                "policyd_alarm",
                {
                    "corrupt": len(corrupt),
                    "suspended": len(suspended),
                    "events": seqs,
                    "channels": list(channels),
                },
            )
            self._notified(conn, outcomes, {"about": "policyd_alarm"})

    # ---- the catalog and the ledger

    def _alarm_row(self, key: tuple[str, int]) -> Row[Any] | None:
        with self.ctx.engine.connect() as conn:
            return conn.execute(
                select(alarm_states).where(
                    alarm_states.c.rule == key[0], alarm_states.c.statement == key[1]
                )
            ).first()

    def _write_alarm(
        self, conn: Connection, key: tuple[str, int], values: dict[str, Any], exists: bool
    ) -> None:
        if exists:
            conn.execute(
                update(alarm_states)
                .where(alarm_states.c.rule == key[0], alarm_states.c.statement == key[1])
                .values(**values)
            )
        else:
            conn.execute(insert(alarm_states).values(rule=key[0], statement=key[1], **values))

    def _send(self, channels: Sequence[str], message: Message) -> list[Outcome]:
        outcomes = [self.notifier.send(channel, message) for channel in channels]
        for outcome in outcomes:
            if outcome.ok:
                self.report.counts["notified"] += 1
            else:
                self.report.counts["notify_failed"] += 1
                self.report.problems.append(
                    f"notification to {outcome.channel} failed: {outcome.error} ({message.subject})"
                )
        return outcomes

    def _event(self, conn: Connection, event: str, payload: dict[str, Any]) -> None:
        ledger.append(
            conn, event, at=self.now, plan_id=self.ctx.plan_id, actor="apply", payload=payload
        )

    def _notified(self, conn: Connection, outcomes: list[Outcome], about: dict[str, Any]) -> None:
        for outcome in outcomes:
            self._event(
                conn,
                "notified" if outcome.ok else "notify_failed",
                {**about, "channel": outcome.channel, "kind": outcome.kind, "error": outcome.error},
            )


def _about_alarm(key: tuple[str, int]) -> dict[str, Any]:
    return {"about": "alarm", "rule": key[0], "statement": key[1]}


def _shown(epoch: float) -> str:
    """A time in whole seconds, rounded up: "not before" must not say a moment early."""
    return datetime.fromtimestamp(math.ceil(epoch), UTC).isoformat().replace("+00:00", "Z")


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _lines(**fields: Any) -> str:
    """`key: value` lines for a message body, skipping unknown values."""
    return "\n".join(f"{k.replace('_', ' ')}: {v}" for k, v in fields.items() if v is not None)


def _listing(items: list[str]) -> str:
    shown = "\n".join(f"  {item}" for item in items[:LISTED])
    more = len(items) - LISTED
    return shown + (f"\n  ... and {more} more" if more > 0 else "")
