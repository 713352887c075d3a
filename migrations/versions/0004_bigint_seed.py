"""PostgreSQL: seeds are 32-bit unsigned, so the seed column is a BIGINT

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 08:00:00.000000

Seeds go up to 2**32 - 1; PostgreSQL's INTEGER stops at 2**31 - 1 and refused every seed above
it. SQLite's INTEGER already holds 64 bits, so nothing changes there (and no table is copied).
The other integer columns hold counts, sizes and row ids well inside 32 bits.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.alter_column("jobs", "seed", type_=sa.BigInteger(), existing_nullable=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # Seeds above 2**31 - 1 cannot go back into an INTEGER: they are dropped, not cut.
        op.execute("UPDATE jobs SET seed = NULL WHERE seed > 2147483647")
        op.alter_column("jobs", "seed", type_=sa.Integer(), existing_nullable=True)
