"""Each file row carries bit masks of where its replicas are, kept by triggers.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 09:00:00

The planner's candidate query asks, for every file, "is there a verified replica on
these locations?" and "how many?", once or more per rule. As correlated subqueries
that is a dozen index probes per file and most of a plan's time on a settled catalog;
as bit tests on two columns of the file's own row it is a scan of `files`.

`verified_on` has bit `1 << location_id` set while the file has a verified replica
there, `held_on` while it has one that is present, verified or corrupt (what a
release or an archive may delete). Locations with an id of 63 or more have no bit;
the planner asks the replicas table about those. Triggers keep the masks, so every
writer (imports, scans, apply, a DBA's SQL) keeps them true; the
(file_id, location_id) uniqueness of replicas makes the single-bit updates exact.

The fixity pass asks for a location's replicas verified longest ago, before a cutoff:
an index on (location_id, verified_at) answers that without reading the location's
every replica (a settled catalog has none due, and the pass then costs nothing).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

HELD = "('present', 'verified', 'corrupt')"
MASKED = 63  # location ids below this have a bit


def _bit(row: str, states: str, one: str = "1") -> str:
    return (
        f"CASE WHEN {row}.state IN {states} AND {row}.location_id < {MASKED} "
        f"THEN {one} << {row}.location_id ELSE 0 END"
    )


SQLITE_TRIGGERS = [
    f"""CREATE TRIGGER replicas_masks_insert AFTER INSERT ON replicas BEGIN
  UPDATE files SET verified_on = verified_on | ({_bit("NEW", "('verified')")}),
    held_on = held_on | ({_bit("NEW", HELD)})
  WHERE id = NEW.file_id;
END""",
    f"""CREATE TRIGGER replicas_masks_update AFTER UPDATE OF file_id, location_id, state
ON replicas BEGIN
  UPDATE files SET verified_on = verified_on & ~({_bit("OLD", "('verified')")}),
    held_on = held_on & ~({_bit("OLD", HELD)})
  WHERE id = OLD.file_id;
  UPDATE files SET verified_on = verified_on | ({_bit("NEW", "('verified')")}),
    held_on = held_on | ({_bit("NEW", HELD)})
  WHERE id = NEW.file_id;
END""",
    f"""CREATE TRIGGER replicas_masks_delete AFTER DELETE ON replicas BEGIN
  UPDATE files SET verified_on = verified_on & ~({_bit("OLD", "('verified')")}),
    held_on = held_on & ~({_bit("OLD", HELD)})
  WHERE id = OLD.file_id;
END""",
]

# PostgreSQL: statement triggers over the transition tables, so a bulk import of a
# million replicas updates each file once per statement, not once per row.
PG_RECOMPUTE = f"""
  UPDATE files f SET verified_on = m.v, held_on = m.h
  FROM (
    SELECT ids.file_id,
      coalesce(bit_or({_bit("r", "('verified')", "1::bigint")}), 0) AS v,
      coalesce(bit_or({_bit("r", HELD, "1::bigint")}), 0) AS h
    FROM (SELECT file_id FROM changed) ids
    LEFT JOIN replicas r ON r.file_id = ids.file_id
    GROUP BY ids.file_id
  ) m
  WHERE f.id = m.file_id
    AND (f.verified_on IS DISTINCT FROM m.v OR f.held_on IS DISTINCT FROM m.h);
"""

PG_STATEMENTS = [
    f"""CREATE FUNCTION policyd_replica_masks_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE files f SET verified_on = f.verified_on | n.v, held_on = f.held_on | n.h
  FROM (
    SELECT file_id, bit_or({_bit("r", "('verified')", "1::bigint")}) AS v,
      bit_or({_bit("r", HELD, "1::bigint")}) AS h
    FROM new_rows r GROUP BY file_id
  ) n
  WHERE f.id = n.file_id;
  RETURN NULL;
END $$""",
    f"""CREATE FUNCTION policyd_replica_masks_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  WITH changed AS (
    SELECT o.file_id FROM old_rows o
    UNION SELECT n.file_id FROM new_rows n
  ) {PG_RECOMPUTE.strip().rstrip(";")};
  RETURN NULL;
END $$""",
    f"""CREATE FUNCTION policyd_replica_masks_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  WITH changed AS (SELECT DISTINCT o.file_id FROM old_rows o)
  {PG_RECOMPUTE.strip().rstrip(";")};
  RETURN NULL;
END $$""",
    """CREATE TRIGGER replicas_masks_insert AFTER INSERT ON replicas
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION policyd_replica_masks_inserted()""",
    """CREATE TRIGGER replicas_masks_update AFTER UPDATE ON replicas
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION policyd_replica_masks_updated()""",
    """CREATE TRIGGER replicas_masks_delete AFTER DELETE ON replicas
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION policyd_replica_masks_deleted()""",
]

BACKFILL = f"""UPDATE files SET
  verified_on = coalesce((SELECT sum({_bit("r", "('verified')", "CAST(1 AS BIGINT)")})
    FROM replicas r WHERE r.file_id = files.id), 0),
  held_on = coalesce((SELECT sum({_bit("r", HELD, "CAST(1 AS BIGINT)")})
    FROM replicas r WHERE r.file_id = files.id), 0)
WHERE EXISTS (SELECT 1 FROM replicas r WHERE r.file_id = files.id)"""


def upgrade() -> None:
    for name in ("verified_on", "held_on"):
        op.add_column("files", sa.Column(name, sa.BigInteger(), nullable=False, server_default="0"))
    op.execute(BACKFILL)
    op.create_index(
        "ix_replicas_location_id_verified_at", "replicas", ["location_id", "verified_at"]
    )
    statements = PG_STATEMENTS if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGERS
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    for event in ("insert", "update", "delete"):
        if op.get_bind().dialect.name == "postgresql":
            op.execute(f"DROP TRIGGER replicas_masks_{event} ON replicas")
        else:
            op.execute(f"DROP TRIGGER replicas_masks_{event}")
    if op.get_bind().dialect.name == "postgresql":
        for event in ("inserted", "updated", "deleted"):
            op.execute(f"DROP FUNCTION policyd_replica_masks_{event}()")
    op.drop_index("ix_replicas_location_id_verified_at", "replicas")
    with op.batch_alter_table("files") as batch:
        batch.drop_column("held_on")
        batch.drop_column("verified_on")
