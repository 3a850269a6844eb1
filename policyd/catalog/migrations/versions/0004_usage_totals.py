"""Bytes and replicas per location and experiment, kept by triggers.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 09:30:00

Every plan and every apply needs the space each location and station uses (usage(),
free(), quotas, snapshots). Summing it from replicas joined to files is a pass over
every replica: over a second at a million files, most of a plan with nothing to do.

Triggers append each replica write's effect to `usage_changes` (+bytes and +1 for a
replica that is not missing, the negative for one that goes; a replica without its own
size counts its file's), and `fold_usage` moves the changes into `usage_totals`, one
row per (location, experiment). Readers sum the totals and the pending changes, so the
figure is exact whether or not a fold ran. Writers only ever insert changes, so
concurrent applies never wait on each other's totals. A file's delete counts its
replicas gone while the file row still says which experiment and size they had
(SQLite: by deleting them first; PostgreSQL, where a trigger may not change the rows
of the statement that fired it: by recording their removal, the cascade's own trigger
then finding no file to join).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHANGE = "INSERT INTO usage_changes (location_id, experiment_id, bytes, replicas)"

SQLITE = [
    f"""CREATE TRIGGER replicas_usage_insert AFTER INSERT ON replicas
WHEN NEW.state != 'missing' BEGIN
  {CHANGE} SELECT NEW.location_id, f.experiment_id, coalesce(NEW.size, f.size, 0), 1
  FROM files f WHERE f.id = NEW.file_id;
END""",
    f"""CREATE TRIGGER replicas_usage_delete AFTER DELETE ON replicas
WHEN OLD.state != 'missing' BEGIN
  {CHANGE} SELECT OLD.location_id, f.experiment_id, -coalesce(OLD.size, f.size, 0), -1
  FROM files f WHERE f.id = OLD.file_id;
END""",
    f"""CREATE TRIGGER replicas_usage_update AFTER UPDATE OF file_id, location_id, state, size
ON replicas BEGIN
  {CHANGE} SELECT OLD.location_id, f.experiment_id, -coalesce(OLD.size, f.size, 0), -1
  FROM files f WHERE f.id = OLD.file_id AND OLD.state != 'missing';
  {CHANGE} SELECT NEW.location_id, f.experiment_id, coalesce(NEW.size, f.size, 0), 1
  FROM files f WHERE f.id = NEW.file_id AND NEW.state != 'missing';
END""",
    f"""CREATE TRIGGER files_usage_update AFTER UPDATE OF size, experiment_id ON files
WHEN OLD.size IS NOT NEW.size OR OLD.experiment_id != NEW.experiment_id BEGIN
  {CHANGE} SELECT r.location_id, OLD.experiment_id, -sum(coalesce(r.size, OLD.size, 0)),
    -count(*)
  FROM replicas r WHERE r.file_id = OLD.id AND r.state != 'missing' GROUP BY r.location_id;
  {CHANGE} SELECT r.location_id, NEW.experiment_id, sum(coalesce(r.size, NEW.size, 0)),
    count(*)
  FROM replicas r WHERE r.file_id = NEW.id AND r.state != 'missing' GROUP BY r.location_id;
END""",
    """CREATE TRIGGER files_usage_delete BEFORE DELETE ON files BEGIN
  DELETE FROM replicas WHERE file_id = OLD.id;
END""",
]


def _pg_replicas(rows: str, sign: str) -> str:
    return f"""{CHANGE}
  SELECT x.location_id, f.experiment_id, {sign}sum(coalesce(x.size, f.size, 0)), {sign}count(*)
  FROM {rows} x JOIN files f ON f.id = x.file_id
  WHERE x.state != 'missing' GROUP BY x.location_id, f.experiment_id;"""


# A row trigger whose WHEN filters in the server's C code: the upserts of an import
# set every file's size, mostly to what it was, and the masks' updates set no size at
# all. (A statement trigger would have to join its two transition tables, which have
# no index and no statistics: a nested loop of each batch with itself.)
PG_FILE_UPDATED = f"""{CHANGE}
  SELECT r.location_id, OLD.experiment_id, -sum(coalesce(r.size, OLD.size, 0)), -count(*)
  FROM replicas r WHERE r.file_id = OLD.id AND r.state != 'missing' GROUP BY r.location_id
  UNION ALL
  SELECT r.location_id, NEW.experiment_id, sum(coalesce(r.size, NEW.size, 0)), count(*)
  FROM replicas r WHERE r.file_id = NEW.id AND r.state != 'missing' GROUP BY r.location_id;"""


def _pg_function(name: str, body: str, returns: str = "NULL") -> str:
    return f"""CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  {body}
  RETURN {returns};
END $$"""


POSTGRESQL = [
    _pg_function("policyd_usage_replicas_inserted", _pg_replicas("new_rows", "")),
    _pg_function("policyd_usage_replicas_deleted", _pg_replicas("old_rows", "-")),
    _pg_function(
        "policyd_usage_replicas_updated",
        _pg_replicas("old_rows", "-") + "\n  " + _pg_replicas("new_rows", ""),
    ),
    _pg_function("policyd_usage_file_updated", PG_FILE_UPDATED),
    # The replicas a file's delete cascades to are deleted after the file row, and
    # their trigger's join to files then finds nothing: the file's trigger counts them.
    _pg_function(
        "policyd_usage_file_deleting",
        f"""{CHANGE}
  SELECT r.location_id, OLD.experiment_id, -sum(coalesce(r.size, OLD.size, 0)), -count(*)
  FROM replicas r WHERE r.file_id = OLD.id AND r.state != 'missing'
  GROUP BY r.location_id;""",
        "OLD",
    ),
    """CREATE TRIGGER replicas_usage_insert AFTER INSERT ON replicas
REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION policyd_usage_replicas_inserted()""",
    """CREATE TRIGGER replicas_usage_delete AFTER DELETE ON replicas
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION policyd_usage_replicas_deleted()""",
    """CREATE TRIGGER replicas_usage_update AFTER UPDATE ON replicas
REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION policyd_usage_replicas_updated()""",
    """CREATE TRIGGER files_usage_update AFTER UPDATE OF size, experiment_id ON files
FOR EACH ROW
WHEN (OLD.size IS DISTINCT FROM NEW.size OR OLD.experiment_id IS DISTINCT FROM NEW.experiment_id)
EXECUTE FUNCTION policyd_usage_file_updated()""",
    """CREATE TRIGGER files_usage_delete BEFORE DELETE ON files
FOR EACH ROW EXECUTE FUNCTION policyd_usage_file_deleting()""",
]

BACKFILL = """INSERT INTO usage_totals (location_id, experiment_id, bytes, replicas)
SELECT r.location_id, f.experiment_id, sum(coalesce(r.size, f.size, 0)), count(*)
FROM replicas r JOIN files f ON f.id = r.file_id
WHERE r.state != 'missing'
GROUP BY r.location_id, f.experiment_id"""


def upgrade() -> None:
    op.create_table(
        "usage_totals",
        sa.Column("location_id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("replicas", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("location_id", "experiment_id", name="pk_usage_totals"),
    )
    op.create_table(
        "usage_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("location_id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("replicas", sa.BigInteger(), nullable=False),
    )
    op.execute(BACKFILL)
    postgresql = op.get_bind().dialect.name == "postgresql"
    for statement in POSTGRESQL if postgresql else SQLITE:
        op.execute(statement)


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    triggers = [
        ("replicas", "replicas_usage_insert"),
        ("replicas", "replicas_usage_delete"),
        ("replicas", "replicas_usage_update"),
        ("files", "files_usage_update"),
        ("files", "files_usage_delete"),
    ]
    for table, name in triggers:
        op.execute(f"DROP TRIGGER {name} ON {table}" if postgresql else f"DROP TRIGGER {name}")
    if postgresql:
        for name in ("replicas_inserted", "replicas_deleted", "replicas_updated"):
            op.execute(f"DROP FUNCTION policyd_usage_{name}()")
        op.execute("DROP FUNCTION policyd_usage_file_updated()")
        op.execute("DROP FUNCTION policyd_usage_file_deleting()")
    op.drop_table("usage_changes")
    op.drop_table("usage_totals")
