"""the GPU fleet: the worker registry and the results table on both databases; on PostgreSQL,
Procrastinate's queue too

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 16:30:00.000000

Procrastinate's schema is read from the installed package, so this revision holds exactly the
schema of the Procrastinate it was written for (3.10): another version's schema.sql may differ,
and its changes must come in as a revision of their own (Procrastinate ships them as SQL files
under procrastinate/sql/migrations). SQLite gets only our two tables: there is no fleet on a
single machine, whose worker is the bot's child process.
"""

import importlib.metadata
import importlib.resources
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROCRASTINATE_SERIES = "3.10."
PROCRASTINATE_TABLES = (
    "procrastinate_events",
    "procrastinate_periodic_defers",
    "procrastinate_jobs",
    "procrastinate_workers",
)
# Procrastinate's functions and types, whatever their signatures (found in the catalogue).
DROP_PROCRASTINATE_ROUTINES_AND_TYPES = r"""
DO $$
DECLARE
    item record;
BEGIN
    FOR item IN
        SELECT p.oid::regprocedure AS signature FROM pg_proc p
        WHERE p.pronamespace = current_schema()::regnamespace
            AND p.proname LIKE 'procrastinate\_%'
    LOOP
        EXECUTE 'DROP FUNCTION ' || item.signature::text;
    END LOOP;
    FOR item IN
        SELECT t.oid::regtype AS name FROM pg_type t
        WHERE t.typnamespace = current_schema()::regnamespace
            AND t.typname LIKE 'procrastinate\_%'
    LOOP
        EXECUTE 'DROP TYPE ' || item.name::text;
    END LOOP;
END;
$$
"""


def check_procrastinate_version(version: str) -> None:
    if not version.startswith(PROCRASTINATE_SERIES):
        raise RuntimeError(
            f"migration 0010 holds Procrastinate {PROCRASTINATE_SERIES}x's schema, but "
            f"{version} is installed: its schema changes need a new revision"
        )


def procrastinate_schema() -> str:
    check_procrastinate_version(importlib.metadata.version("procrastinate"))
    schema = importlib.resources.files("procrastinate.sql") / "schema.sql"
    return schema.read_text(encoding="utf-8")


def _run_script(sql: str) -> None:
    """Several statements at once, as written: no parameters, so `%` is no placeholder."""
    op.get_bind().exec_driver_sql(sql, execution_options={"no_parameters": True})


def upgrade() -> None:
    op.create_table(
        "gpu_workers",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("operations", sa.Text(), nullable=False),
        sa.Column("capacity", sa.Integer(), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("jobs_done", sa.Integer(), nullable=False),
        sa.Column("jobs_failed", sa.Integer(), nullable=False),
        sa.Column("seconds_per_image", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "gpu_results",
        sa.Column(
            "queue_id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("refused", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("images", sa.JSON(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("worker_id", sa.String(length=32), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("queue_id"),
    )
    with op.batch_alter_table("gpu_results", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_gpu_results_finished_at"), ["finished_at"], unique=False
        )
    if op.get_bind().dialect.name == "postgresql":
        _run_script(procrastinate_schema())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in PROCRASTINATE_TABLES:
            op.execute(f"DROP TABLE IF EXISTS {table} CASCADE")
        _run_script(DROP_PROCRASTINATE_ROUTINES_AND_TYPES)
    op.drop_table("gpu_results")
    op.drop_table("gpu_workers")
