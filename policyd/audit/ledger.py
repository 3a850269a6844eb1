"""The audit ledger: an append-only, hash-chained record of everything policyd does.

Every event (an action planned, started, done, failed, suspended or refused; a pin; a
notice sent) is one row whose `record` is the event's canonical JSON text and whose
`hash` is SHA-256 of the previous event's hash followed by that text. Changing,
removing or reordering any event breaks the chain from that event on, and
`policyd ledger verify` names the first broken one. Events are appended in the same
transaction as the catalog change they describe, so the ledger and the catalog never
disagree after a crash: either both happened or neither did.

The chain detects edits inside the ledger; it cannot tell that events were cut off
the end. The last hash printed by `ledger verify` is the anchor to keep elsewhere.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import orjson
from sqlalchemy import Engine, insert, select, text
from sqlalchemy.engine import Connection

from policyd.catalog.schema import audit_events

GENESIS: Final = "0" * 64
#: Serialises appends across processes sharing a PostgreSQL catalog.
_PG_LEDGER_LOCK: Final = 0x706F6C6C  # "poll"


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    at: float
    event: str
    actor: str | None
    plan_id: str | None
    action_id: str | None
    payload: dict[str, Any]
    hash: str


def _record(fields: Mapping[str, Any]) -> bytes:
    return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)


def _hash(prev_hash: str, record: bytes) -> str:
    return hashlib.sha256(prev_hash.encode() + record).hexdigest()


@dataclass(frozen=True, slots=True)
class Entry:
    """An event to append: everything but its place in the chain."""

    event: str
    at: float
    plan_id: str | None = None
    action_id: str | None = None
    actor: str | None = None
    payload: Mapping[str, Any] | None = None


def append(
    conn: Connection,
    event: str,
    *,
    at: float,
    plan_id: str | None = None,
    action_id: str | None = None,
    actor: str | None = None,
    payload: Mapping[str, Any] | None = None,
) -> Event:
    """Append one event inside the caller's transaction."""
    return append_all(conn, [Entry(event, at, plan_id, action_id, actor, payload)])[0]


def append_all(conn: Connection, entries: Sequence[Entry]) -> list[Event]:
    """Append events, in order, inside the caller's transaction: the chain's end is
    read once and the rows go in one statement (an apply records many actions at a
    time, four statements per event were most of its catalog work)."""
    if not entries:
        return []
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LEDGER_LOCK})
    elif conn.dialect.name == "sqlite":
        # SQLite begins the transaction at its first write: take the write lock before
        # reading the chain's end, or two writers both append after the same event.
        conn.execute(text("UPDATE audit_events SET seq = seq WHERE 0"))
    last = conn.execute(
        select(audit_events.c.seq, audit_events.c.hash).order_by(audit_events.c.seq.desc()).limit(1)
    ).first()
    seq = 0 if last is None else int(last[0])
    prev_hash = GENESIS if last is None else str(last[1])
    rows: list[dict[str, Any]] = []
    appended: list[Event] = []
    for entry in entries:
        seq += 1
        body = dict(entry.payload or {})
        fields = {
            "seq": seq,
            "at": entry.at,
            "event": entry.event,
            "actor": entry.actor,
            "plan_id": entry.plan_id,
            "action_id": entry.action_id,
            "payload": body,
        }
        record = _record(fields)
        digest = _hash(prev_hash, record)
        columns = {k: v for k, v in fields.items() if k != "payload"}
        rows.append({**columns, "prev_hash": prev_hash, "hash": digest, "record": record.decode()})
        appended.append(
            Event(
                seq,
                entry.at,
                entry.event,
                entry.actor,
                entry.plan_id,
                entry.action_id,
                body,
                digest,
            )
        )
        prev_hash = digest
    conn.execute(insert(audit_events), rows)
    return appended


def events(conn: Connection, plan_id: str | None = None, since_seq: int = 0) -> Iterator[Event]:
    """Events in order, optionally of one plan, as their records say."""
    query = select(audit_events.c.record, audit_events.c.hash).where(audit_events.c.seq > since_seq)
    if plan_id is not None:
        query = query.where(audit_events.c.plan_id == plan_id)
    for record, digest in conn.execute(query.order_by(audit_events.c.seq)):
        fields = orjson.loads(record) if record else {}
        yield Event(
            int(fields.get("seq", 0)),
            float(fields.get("at", 0.0)),
            str(fields.get("event", "")),
            fields.get("actor"),
            fields.get("plan_id"),
            fields.get("action_id"),
            fields.get("payload") or {},
            str(digest),
        )


@dataclass(frozen=True)
class Verification:
    events: int
    last_hash: str
    broken_seq: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.broken_seq is None


_COLUMNS: Final = ("seq", "at", "event", "actor", "plan_id", "action_id")


def verify(engine: Engine) -> Verification:
    """Walk the chain; the first event whose text, hash, link or columns do not hold."""
    expected_prev = GENESIS
    count = 0
    expected_seq = 1
    query = select(audit_events).order_by(audit_events.c.seq)
    with engine.connect() as conn:
        for row in conn.execution_options(yield_per=5000).execute(query).mappings():
            seq = int(row["seq"])
            if seq != expected_seq:
                return Verification(count, expected_prev, expected_seq, "event missing")
            if row["prev_hash"] != expected_prev:
                return Verification(count, expected_prev, seq, "link to the previous event broken")
            record = row["record"]
            if not record:
                return Verification(count, expected_prev, seq, "event text missing")
            if _hash(expected_prev, record.encode()) != row["hash"]:
                return Verification(count, expected_prev, seq, "event text altered")
            fields = orjson.loads(record)
            for column in _COLUMNS:
                if fields.get(column) != row[column]:
                    return Verification(count, expected_prev, seq, f"column {column} altered")
            # `append` leaves the JSON column empty (the record is the event): anything
            # there was put by someone else, for SQL readers to take as the event's
            if row["payload"] is not None:
                return Verification(count, expected_prev, seq, "column payload altered")
            expected_prev = row["hash"]
            expected_seq += 1
            count += 1
    return Verification(count, expected_prev)
