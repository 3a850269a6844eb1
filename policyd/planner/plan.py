"""The plan: what must happen, as a value apart from its two views (JSON and text).

As in terraform's `plans` package, the plan is computed once and rendered twice: the
JSON file of spec/cli.md (what `apply` reads, byte-identical for identical inputs) and
the human view grouped by rule (`render.py`). Actions are small slotted records in the
order the planner made them; their ids (`a1`, `a2`, ...) follow that order, so `after`
always points backwards and the order is a valid execution order of the DAG.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from io import BytesIO
from typing import IO, Any, Final, Protocol

import orjson

from policyd.gcpause import gc_paused

PLAN_VERSION: Final = 1
ACTION_KINDS: Final = ("copy", "verify", "delete", "expire", "acl", "workflow")
SYMBOLS: Final = {
    "copy": "+",
    "verify": "+",
    "delete": "-",
    "expire": "-",
    "acl": "~",
    "workflow": ">",
    "alarm": "!",
}


@dataclass(slots=True)
class Action:
    id: str
    kind: str
    rule: str
    reason: str
    experiment: str
    file: str | None = None
    source: str | None = None
    target: str | None = None
    path: str | None = None
    bytes: int | None = None
    after: tuple[str, ...] = ()
    op: str | None = None
    principal: str | None = None
    perms: tuple[str, ...] | None = None
    workflow: str | None = None
    args: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """The action's object in the plan file, keys in their documented order. Spelled
        out field by field: a plan of 1M files has hundreds of thousands of actions, and
        this runs once for each."""
        out: dict[str, Any] = {
            "id": self.id,
            "kind": self.kind,
            "rule": self.rule,
            "reason": self.reason,
        }
        if self.op is not None:
            out["op"] = self.op
        out["experiment"] = self.experiment
        if self.file is not None:
            out["file"] = self.file
        if self.source is not None:
            out["source"] = self.source
        if self.target is not None:
            out["target"] = self.target
        if self.path is not None:
            out["path"] = self.path
        if self.principal is not None:
            out["principal"] = self.principal
        if self.perms is not None:
            out["perms"] = list(self.perms)
        if self.workflow is not None:
            out["workflow"] = self.workflow
            out["args"] = self.args or {}
        if self.bytes is not None:
            out["bytes"] = self.bytes
        out["after"] = list(self.after)
        return out


@dataclass(slots=True)
class AlarmChange:
    rule: str
    statement: int
    state: str  # raise or clear
    severity: str
    notify: tuple[str, ...]
    value: str | None
    message: str

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "statement": self.statement,
            "state": self.state,
            "severity": self.severity,
            "notify": list(self.notify),
            "value": self.value,
            "message": self.message,
        }


@dataclass(slots=True)
class Blocked:
    """A delete the safety rules forbid now, and why."""

    rule: str
    experiment: str
    file: str
    target: str
    reason: str

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "experiment": self.experiment,
            "file": self.file,
            "target": self.target,
            "reason": self.reason,
        }


@dataclass(slots=True)
class PlanError:
    rule: str
    experiment: str | None
    file: str | None
    message: str

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "experiment": self.experiment,
            "file": self.file,
            "message": self.message,
        }


@dataclass(slots=True)
class Notice:
    """`notify CH before D`: CH is told before an experiment's first delete by a rule;
    the deletes wait until the notice is D old."""

    rule: str
    experiment: str
    channel: str
    files: int
    bytes: int
    delete_after: str  # when the deletes may start, ISO 8601 UTC

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "experiment": self.experiment,
            "channel": self.channel,
            "files": self.files,
            "bytes": self.bytes,
            "delete_after": self.delete_after,
        }


class _JsonItem(Protocol):
    """What the plan file lists: anything that gives its JSON object."""

    def as_json(self) -> dict[str, Any]: ...


_CHUNK: Final = 1024


def _chunk_text(items: Sequence[_JsonItem]) -> bytes:
    """`items` one per line. Joined at once: orjson's result for each item holds a
    buffer of a few KB, so a plan's lines kept apart would take over a GB."""
    return b",\n    ".join([orjson.dumps(item.as_json()) for item in items])


def _write_items(out: IO[bytes], items: Sequence[_JsonItem], encoded: Sequence[bytes] = ()) -> None:
    """`items` one per line, a chunk at a time: one join and one write per chunk rather
    than two writes per item. `encoded` holds the text of the first chunks, if they
    were encoded ahead."""
    for number, start in enumerate(range(0, len(items), _CHUNK)):
        out.write(b"\n    " if start == 0 else b",\n    ")
        if number < len(encoded):
            out.write(encoded[number])
        else:
            out.write(_chunk_text(items[start : start + _CHUNK]))


@dataclass(slots=True)
class Suspended:
    """An action an earlier apply gave up on after its retries, with its last error; the
    plan may hold a fresh action for the same file, which the next apply tries anew."""

    kind: str
    rule: str | None
    experiment: str | None
    file: str | None
    target: str | None
    attempts: int
    error: str | None
    plan_id: str

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rule": self.rule,
            "experiment": self.experiment,
            "file": self.file,
            "target": self.target,
            "attempts": self.attempts,
            "error": self.error,
            "plan_id": self.plan_id,
        }


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class Plan:
    site: str
    now: float
    catalog_fingerprint: str
    actions: list[Action] = field(default_factory=list)
    alarms: list[AlarmChange] = field(default_factory=list)
    blocked: list[Blocked] = field(default_factory=list)
    errors: list[PlanError] = field(default_factory=list)
    notices: list[Notice] = field(default_factory=list)
    suspended: list[Suspended] = field(default_factory=list)
    max_delete_per_run: int | None = None
    # the text of the first chunks of actions and blocked deletes, by section, encoded
    # while the planner waited for the catalog (neither changes once made)
    encoded: dict[str, list[bytes]] = field(
        default_factory=lambda: {"actions": [], "blocked": []}, repr=False, compare=False
    )

    def new_action(
        self,
        kind: str,
        rule: str,
        reason: str,
        experiment: str,
        *,
        file: str | None = None,
        source: str | None = None,
        target: str | None = None,
        path: str | None = None,
        bytes: int | None = None,
        after: tuple[str, ...] = (),
        op: str | None = None,
        principal: str | None = None,
        perms: tuple[str, ...] | None = None,
        workflow: str | None = None,
        args: dict[str, Any] | None = None,
    ) -> Action:
        """The next action, numbered in plan order. Its fields are passed on by position:
        a plan makes an action per copy and verify, and keywords cost twice."""
        action = Action(
            f"a{len(self.actions) + 1}",
            kind,
            rule,
            reason,
            experiment,
            file,
            source,
            target,
            path,
            bytes,
            after,
            op,
            principal,
            perms,
            workflow,
            args,
        )
        self.actions.append(action)
        return action

    def encode_ahead(self) -> bool:
        """Encode the next whole chunk of the actions (then of the blocked deletes) made
        so far, if there is one, for write_json; whether another is ready. Called when
        the planner would otherwise wait: a plan of 1M files spends about a sixth of
        its time encoding, which then costs nothing."""
        for items, encoded in self._encoded_sections():
            start = len(encoded) * _CHUNK
            if len(items) - start >= _CHUNK:
                encoded.append(_chunk_text(items[start : start + _CHUNK]))
                break
        else:
            return False
        return any(
            len(items) - len(encoded) * _CHUNK >= _CHUNK
            for items, encoded in self._encoded_sections()
        )

    def _encoded_sections(self) -> tuple[tuple[Sequence[_JsonItem], list[bytes]], ...]:
        return (
            (self.actions, self.encoded["actions"]),
            (self.blocked, self.encoded["blocked"]),
        )

    @property
    def has_changes(self) -> bool:
        return bool(self.actions or self.alarms or self.notices)

    def summary(self) -> dict[str, Any]:
        counts = Counter(a.kind for a in self.actions)
        to_copy = sum(a.bytes or 0 for a in self.actions if a.kind == "copy")
        to_free = sum(a.bytes or 0 for a in self.actions if a.kind in ("delete", "expire"))
        out: dict[str, Any] = {kind: counts.get(kind, 0) for kind in ACTION_KINDS}
        out |= {
            "alarms": len(self.alarms),
            "notices": len(self.notices),
            "blocked": len(self.blocked),
            "errors": len(self.errors),
            "bytes_to_copy": to_copy,
            "bytes_to_free": to_free,
        }
        limit = self.max_delete_per_run
        out["over_max_delete"] = limit is not None and to_free > limit
        return out

    def write_json(self, out: IO[bytes]) -> None:
        """The plan file, written action by action: one action per line."""
        with gc_paused():
            self._write_json(out)

    def _write_json(self, out: IO[bytes]) -> None:
        head = {
            "version": PLAN_VERSION,
            "site": self.site,
            "now": iso(self.now),
            "catalog_fingerprint": self.catalog_fingerprint,
        }
        out.write(orjson.dumps(head, option=orjson.OPT_INDENT_2)[:-2])
        for name, items in (
            ("actions", self.actions),
            ("alarms", self.alarms),
            ("notices", self.notices),
            ("blocked", self.blocked),
            ("errors", self.errors),
            ("suspended", self.suspended),
        ):
            out.write(b',\n  "' + name.encode() + b'": [')
            _write_items(out, items, self.encoded.get(name, ()))
            out.write(b"\n  ]" if items else b"]")
        out.write(b',\n  "summary": ' + orjson.dumps(self.summary()) + b"\n}\n")

    def json_bytes(self) -> bytes:
        buffer = BytesIO()
        self.write_json(buffer)
        return buffer.getvalue()

    def by_rule(self) -> Iterator[tuple[str, list[Action]]]:
        """Actions grouped by rule, rules in the order of their first action."""
        groups: dict[str, list[Action]] = {}
        for action in self.actions:
            groups.setdefault(action.rule, []).append(action)
        yield from groups.items()
