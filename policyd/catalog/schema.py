"""The catalog's tables, in SQLAlchemy Core so one definition serves SQLite and PostgreSQL.

Times are stored as epoch seconds (double precision, UTC), as the DM catalog itself
writes them: a rule's time arithmetic then compiles to the same plain comparisons on
every backend (SQL, Mongo, Python), which is what keeps the three in agreement.
`files.name` and `files.ext` repeat what `files.path` holds so that the planner can
push `file.name like ...` and `file.ext in [...]` down to plain column comparisons
instead of string surgery that SQLite and PostgreSQL would each spell differently.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql

#: The count and term sums columns of catalog_sums (policyd.catalog.sums).
SUM_VALUES = ("n", "c1", "c2", "c3", "c4", "c5")
REPLICA_STATES = ("present", "verified", "missing", "corrupt")
#: A workflow job's status (spec/rules.md section 8; policyd/actions/workflow.py).
JOB_STATUSES = ("pending", "running", "done", "failed", "aborted", "timeout")

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

Json = JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
Epoch = Double()

stations = Table(
    "stations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("description", Text),
    Column("meta", Json),
)

locations = Table(
    "locations",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(128), nullable=False, unique=True),
    Column("url", Text, nullable=False),
    Column("tier", String(64)),
    Column("site", String(64)),
    Column("capacity", BigInteger),
)

experiments = Table(
    "experiments",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("station", String(64), index=True),
    Column("type", String(128)),
    Column("description", Text),
    Column("start", Epoch),
    Column("end", Epoch),
    Column("users", Json),
    Column("meta", Json),
    Column("pinned_until", Epoch),
)

files = Table(
    "files",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("experiment_id", ForeignKey("experiments.id"), nullable=False),
    Column("path", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("ext", Text, nullable=False),
    Column("size", BigInteger),
    Column("md5", String(32)),
    Column("created", Epoch),
    Column("modified", Epoch, index=True),
    Column("meta", Json),
    Column("expired_at", Epoch),
    # Bit 1 << location_id per location holding a verified (held: present, verified or
    # corrupt) replica, kept by triggers on replicas (migration 0003); ids < 63 only.
    Column("verified_on", BigInteger, nullable=False, server_default="0"),
    Column("held_on", BigInteger, nullable=False, server_default="0"),
    UniqueConstraint("experiment_id", "path"),
)

replicas = Table(
    "replicas",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("file_id", ForeignKey("files.id", ondelete="CASCADE"), nullable=False),
    Column("location_id", ForeignKey("locations.id"), nullable=False),
    Column("path", Text, nullable=False),
    Column("state", String(16), nullable=False),
    Column("size", BigInteger),
    Column("mtime", Epoch),
    Column("checksum", String(64)),
    Column("verified_at", Epoch),
    Column("seen_at", Epoch),
    UniqueConstraint("file_id", "location_id"),
    Index(None, "location_id", "state"),
    Index(None, "location_id", "verified_at"),
)

# Space per location and experiment: triggers on replicas and files append each write's
# effect to usage_changes, and policyd.catalog.usage folds them into usage_totals
# (migration 0004).
usage_totals = Table(
    "usage_totals",
    metadata,
    Column("location_id", Integer, primary_key=True),
    Column("experiment_id", Integer, primary_key=True),
    Column("bytes", BigInteger, nullable=False),
    Column("replicas", BigInteger, nullable=False),
)

usage_changes = Table(
    "usage_changes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("location_id", Integer, nullable=False),
    Column("experiment_id", Integer, nullable=False),
    Column("bytes", BigInteger, nullable=False),
    Column("replicas", BigInteger, nullable=False),
)

# The plan fingerprint's sums per table (policyd.catalog.sums, migration 0005): totals,
# the changes triggers append, and the digest of the terms the triggers were made from.
catalog_sums = Table(
    "catalog_sums",
    metadata,
    Column("tbl", Integer, primary_key=True, autoincrement=False),
    *(Column(c, BigInteger, nullable=False, server_default="0") for c in SUM_VALUES),
)

catalog_sum_changes = Table(
    "catalog_sum_changes",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("tbl", Integer, nullable=False),
    *(Column(c, BigInteger, nullable=False, server_default="0") for c in SUM_VALUES),
)

catalog_sums_spec = Table(
    "catalog_sums_spec",
    metadata,
    Column("digest", String(64), primary_key=True),
)

#: Tables the triggers keep from the others, and the one that says how they were made:
#: emptying a catalog (tests) deletes the data first, then these, never the spec.
DERIVED_TABLES = (
    "catalog_sums",
    "catalog_sum_changes",
    "usage_totals",
    "usage_changes",
)
SPEC_TABLES = ("catalog_sums_spec",)

usage_snapshots = Table(
    "usage_snapshots",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("taken_at", Epoch, nullable=False),
    Column("location_id", ForeignKey("locations.id"), nullable=False),
    Column("station", String(64)),
    Column("used_bytes", BigInteger, nullable=False),
    Column("file_count", BigInteger, nullable=False),
    Column("capacity", BigInteger),
    Index(None, "location_id", "station", "taken_at"),
)

# The action ledger: one row per planned action, its current state; the audit chain
# below records every transition of it.
actions = Table(
    "actions",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("plan_id", String(80), nullable=False),
    Column("action_id", String(32), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("rule", String(255)),
    Column("experiment", String(255)),
    Column("file", Text),
    Column("target", String(128)),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("not_before", Epoch),
    Column("updated_at", Epoch, nullable=False),
    Column("payload", Json),
    UniqueConstraint("plan_id", "action_id"),
    Index(None, "state", "not_before"),
)

audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("at", Epoch, nullable=False),
    Column("event", String(32), nullable=False),
    Column("actor", String(128)),
    Column("plan_id", String(80)),
    Column("action_id", String(32)),
    Column("payload", Json),
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
    Column("record", Text),  # the canonical text the hash covers (migration 0002)
)

alarm_states = Table(
    "alarm_states",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("rule", String(255), nullable=False),
    Column("statement", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("since", Epoch),
    Column("condition_since", Epoch),
    Column("last_notified_at", Epoch),
    Column("value", Text),
    UniqueConstraint("rule", "statement"),
)

grants = Table(
    "grants",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("rule", String(255), nullable=False),
    Column("experiment_id", ForeignKey("experiments.id"), nullable=False),
    Column("location_id", ForeignKey("locations.id"), nullable=False),
    Column("path", Text, nullable=False),
    Column("principal", String(255), nullable=False),
    Column("perms", String(32), nullable=False),
    Column("granted_at", Epoch, nullable=False),
    UniqueConstraint("experiment_id", "location_id", "principal"),
)

notices = Table(
    "notices",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("rule", String(255), nullable=False),
    Column("experiment_id", ForeignKey("experiments.id"), nullable=False),
    Column("channel", String(128), nullable=False),
    Column("sent_at", Epoch, nullable=False),
    Column("payload", Json),
    UniqueConstraint("rule", "experiment_id", "channel"),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("workflow", String(255), nullable=False),
    Column("rule", String(255)),
    Column("file_id", ForeignKey("files.id", ondelete="SET NULL")),
    Column("content", String(128)),
    Column("status", String(16), nullable=False),
    Column("stage", String(128)),
    Column("submitted_at", Epoch, nullable=False),
    Column("started_at", Epoch),
    Column("ended_at", Epoch),
    Column("attempts", Integer, nullable=False, default=0),
    Column("variables", Json),
    Column("stages", Json),
    Index(None, "workflow", "file_id", "content"),
    Index(None, "status"),
)
