"""The plan fingerprint's per-table sums, kept by triggers (policyd.catalog.sums).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 10:00:00

Scanning every replica and file for the sums was half of a plan with nothing to do
at a million files. The triggers and the first totals are made from the terms in
policyd/catalog/sums.py; a later change of those terms needs a migration that calls
`install` again (until then the catalog is read by scanning: the stored digest of
the triggers no longer matches).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from policyd.catalog import sums
from policyd.catalog.schema import SUM_VALUES

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _values() -> list[sa.Column]:
    return [
        sa.Column(name, sa.BigInteger(), nullable=False, server_default="0") for name in SUM_VALUES
    ]


def upgrade() -> None:
    op.create_table(
        "catalog_sums",
        sa.Column("tbl", sa.Integer(), autoincrement=False, nullable=False),
        *_values(),
        sa.PrimaryKeyConstraint("tbl", name="pk_catalog_sums"),
    )
    op.create_table(
        "catalog_sum_changes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("tbl", sa.Integer(), nullable=False),
        *_values(),
    )
    op.create_table(
        "catalog_sums_spec",
        sa.Column("digest", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_catalog_sums_spec"),
    )
    sums.install(op.get_bind())


def downgrade() -> None:
    for statement in sums.drop_statements(op.get_bind().dialect.name):
        op.execute(statement)
    op.drop_table("catalog_sums_spec")
    op.drop_table("catalog_sum_changes")
    op.drop_table("catalog_sums")
