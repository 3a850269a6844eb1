"""The audit ledger keeps each event's canonical text, the bytes its hash covers.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 06:00:00

A JSON column does not give back the bytes it was given (PostgreSQL's JSONB reorders
keys and rewrites numbers), so a hash over it could not be checked later; the event
is stored as the exact text that was hashed.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("record", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("record")
