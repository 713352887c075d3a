"""what a user can feel moves to the database: the chat platforms' waits for a photo or a choice,
Telegram's inbox of updates not handled yet, Discord's deferred interactions (their tokens
sealed), and each job's request key, so that a request handled twice makes one job

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UTC_TIME = sa.DateTime(timezone=True)


def upgrade() -> None:
    # A plain ADD COLUMN (no table copy on SQLite); jobs made before have no request key.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_key", sa.String(length=128), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_request_key"), ["request_key"], unique=True)
    op.create_table(
        "chat_waits",
        sa.Column("token", sa.String(length=32), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("chat", sa.String(length=64), nullable=False),
        sa.Column("person", sa.String(length=64), nullable=False),
        sa.Column("for_photo", sa.Boolean(), nullable=False),
        sa.Column("request", sa.JSON(), nullable=False),
        sa.Column("expires_at", UTC_TIME, nullable=False),
        sa.Column("taken_by", sa.String(length=128), nullable=True),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("token"),
    )
    with op.batch_alter_table("chat_waits", schema=None) as batch_op:
        batch_op.create_index("ix_chat_waits_person", ["platform", "person", "chat"], unique=False)
        batch_op.create_index(batch_op.f("ix_chat_waits_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_chat_waits_taken_by"), ["taken_by"], unique=False)
    op.create_table(
        "chat_inbox",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("bot", sa.String(length=32), nullable=False),
        sa.Column("person", sa.String(length=64), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("received_at", UTC_TIME, nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("chat_inbox", schema=None) as batch_op:
        batch_op.create_index("ix_chat_inbox_source", ["platform", "bot"], unique=False)
        batch_op.create_index("ix_chat_inbox_person", ["platform", "person"], unique=False)
    op.create_table(
        "deferred_interactions",
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("platform", sa.String(length=32), nullable=False),
        sa.Column("person", sa.String(length=64), nullable=False),
        sa.Column("application_id", sa.String(length=32), nullable=False),
        sa.Column("message_id", sa.String(length=32), nullable=True),
        sa.Column("sealed_token", sa.Text(), nullable=False),
        sa.Column("expires_at", UTC_TIME, nullable=False),
        sa.Column("created_at", UTC_TIME, nullable=False),
        sa.Column("lease_owner", sa.String(length=64), nullable=True),
        sa.Column("lease_expires_at", UTC_TIME, nullable=True),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("deferred_interactions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_deferred_interactions_person", ["platform", "person"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_deferred_interactions_expires_at"), ["expires_at"], unique=False
        )


def downgrade() -> None:
    op.drop_table("deferred_interactions")
    op.drop_table("chat_inbox")
    op.drop_table("chat_waits")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_request_key"))
        batch_op.drop_column("request_key")
