"""the provider's queue in the database: each waiting job's place in the fair line (round, slot,
sequence), when it was given a provider slot, and the line's own state (the current round and
the next sequence number), so that every replica hands out the one global set of slots

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 10:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# 64 bits on both (SQLite's INTEGER is 64 bits already; PostgreSQL's is 32).
BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ADD COLUMNs (no table copy on SQLite); a job with no place yet is placed by the next
    # dispatch pass, so jobs queued by an older replica are taken in as they are.
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queue_round", BIG, nullable=True))
        batch_op.add_column(sa.Column("queue_slot", sa.Integer(), nullable=True))
        # The community the place's slot was counted for (it moves with the place).
        batch_op.add_column(sa.Column("queue_community", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("queue_seq", BIG, nullable=True))
        batch_op.add_column(sa.Column("dispatched_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_queue_round"), ["queue_round"], unique=False)
    op.create_table(
        "dispatch_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("current_round", BIG, nullable=False),
        sa.Column("next_seq", BIG, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.execute("INSERT INTO dispatch_state (id, current_round, next_seq) VALUES (1, 0, 0)")


def downgrade() -> None:
    op.drop_table("dispatch_state")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_queue_round"))
        batch_op.drop_column("dispatched_at")
        batch_op.drop_column("queue_seq")
        batch_op.drop_column("queue_community")
        batch_op.drop_column("queue_slot")
        batch_op.drop_column("queue_round")
