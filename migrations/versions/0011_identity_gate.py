"""the identity gate: each generated image's distance from the selfie, the retries it asked
for, and the images it measured while their job runs

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 23:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("identity_retries", sa.Integer(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("identity_distance", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("identity_passed", sa.Boolean(), nullable=True))
    op.create_table(
        "identity_checks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("slot", sa.Integer(), nullable=False),
        sa.Column("operation", sa.String(length=32), nullable=False),
        sa.Column("backend", sa.String(length=32), nullable=False),
        sa.Column("distance", sa.Float(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("content_key", sa.String(length=255), nullable=True),
        sa.Column("content_type", sa.String(length=32), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("size_bytes", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "attempt", "slot"),
    )
    with op.batch_alter_table("identity_checks", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_identity_checks_job_id"), ["job_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("identity_checks", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_identity_checks_job_id"))
    op.drop_table("identity_checks")
    with op.batch_alter_table("outputs", schema=None) as batch_op:
        batch_op.drop_column("identity_passed")
        batch_op.drop_column("identity_distance")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("identity_retries")
