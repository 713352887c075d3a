"""the cluster: job and delivery leases (the one process driving a job or showing its
result, until when), facts every process
on the database must agree on (the pseudonym key's check), and /forget's confirmation codes,
which any replica may be asked to redeem

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs (no table copy on SQLite). A job without a lease is anyone's to take.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(batch_op.f("ix_jobs_lease_owner"), ["lease_owner"], unique=False)
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch_op.add_column(
            sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(
            batch_op.f("ix_deliveries_lease_owner"), ["lease_owner"], unique=False
        )
    op.create_table(
        "instance_facts",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "confirmations",
        sa.Column("code_hash", sa.String(length=64), nullable=False),
        sa.Column("owner", sa.String(length=64), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("code_hash"),
    )
    with op.batch_alter_table("confirmations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_confirmations_owner"), ["owner"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_confirmations_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    op.drop_table("confirmations")
    op.drop_table("instance_facts")
    with op.batch_alter_table("deliveries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deliveries_lease_owner"))
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_lease_owner"))
        batch_op.drop_column("lease_expires_at")
        batch_op.drop_column("lease_owner")
