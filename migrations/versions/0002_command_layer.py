"""command layer: job history and re-roll fields, scoped settings, bans, forgotten usage

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs (no table copy on SQLite): every new column is nullable, no default.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("style", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("user_prompt", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("inputs_expire_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.create_index(
            batch_op.f("ix_jobs_inputs_expire_at"), ["inputs_expire_at"], unique=False
        )

    op.create_table(
        "scoped_settings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("community_id", sa.Integer(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(["community_id"], ["communities.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("scoped_settings", schema=None) as batch_op:
        batch_op.create_index(
            "ix_scoped_settings_scope", ["community_id", "user_id", "key"], unique=False
        )

    op.create_table(
        "bans",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("community_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("banned_by", sa.String(length=128), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["community_id"], ["communities.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("bans", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bans_subject"), ["subject"], unique=False)

    op.create_table(
        "forgotten_usage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=64), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("forgotten_usage", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_forgotten_usage_subject"), ["subject"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("forgotten_usage", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_forgotten_usage_subject"))

    op.drop_table("forgotten_usage")
    with op.batch_alter_table("bans", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_bans_subject"))

    op.drop_table("bans")
    with op.batch_alter_table("scoped_settings", schema=None) as batch_op:
        batch_op.drop_index("ix_scoped_settings_scope")

    op.drop_table("scoped_settings")
    # On SQLite this copies the jobs table; env.py turns foreign-key actions off for the copy,
    # or dropping the old table would cascade into the ledger and the outputs.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_inputs_expire_at"))
        batch_op.drop_column("inputs_expire_at")
        batch_op.drop_column("deleted_at")
        batch_op.drop_column("user_prompt")
        batch_op.drop_column("style")
