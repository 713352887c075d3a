"""The migrations on a real SQLite file and a real PostgreSQL: up, down, up again, and the models
matching what the migrations build."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from storage.database import Database
from storage.migrate import downgrade, upgrade
from storage.models import Base
from tests.conftest import register_database
from tests.databases import columns, execute, indexes, query, tables

BEFORE = {"users", "communities", "jobs", "outputs", "credit_ledger", "audit_log"}
AFTER = BEFORE | {"scoped_settings", "bans", "forgotten_usage"}
HEAD = AFTER | {
    "deliveries",
    "instance_facts",
    "confirmations",
    "dispatch_state",
    "chat_waits",
    "chat_inbox",
    "deferred_interactions",
    "posts",
    "gpu_workers",
    "gpu_results",
    "identity_checks",
}
# Procrastinate's own tables (PostgreSQL only, revision 0010): its schema, not our models.
PROCRASTINATE = {
    "procrastinate_jobs",
    "procrastinate_workers",
    "procrastinate_events",
    "procrastinate_periodic_defers",
}
HEAD_REVISION = "0012"
NEW_JOB_COLUMNS = {"style", "user_prompt", "deleted_at", "inputs_expire_at"}


def head_tables(url: str) -> set[str]:
    return HEAD | PROCRASTINATE if url.startswith("postgresql") else HEAD


def _version(url: str) -> str:
    return str(query(url, "SELECT version_num FROM alembic_version")[0][0])


async def test_0002_up_down_up(empty_database_url: str) -> None:
    url = path = empty_database_url
    await upgrade(url, "0001")
    assert tables(path) == BEFORE
    assert not NEW_JOB_COLUMNS & columns(path, "jobs")

    await upgrade(url, "0002")
    assert _version(path) == "0002"
    assert tables(path) == AFTER
    assert columns(path, "jobs") >= NEW_JOB_COLUMNS
    assert "ix_jobs_inputs_expire_at" in indexes(path, "jobs")
    assert "ix_scoped_settings_scope" in indexes(path, "scoped_settings")
    assert "ix_bans_subject" in indexes(path, "bans")
    assert "ix_forgotten_usage_subject" in indexes(path, "forgotten_usage")

    await downgrade(url, "0001")
    assert _version(path) == "0001"
    assert tables(path) == BEFORE
    assert not NEW_JOB_COLUMNS & columns(path, "jobs")
    assert {"ix_jobs_state", "ix_jobs_user_created"} <= indexes(path, "jobs")

    await upgrade(url, "0002")
    assert tables(path) == AFTER
    assert columns(path, "jobs") >= NEW_JOB_COLUMNS


async def test_base_to_head_and_back(empty_database_url: str) -> None:
    url = path = empty_database_url
    await upgrade(url)
    assert tables(path) == head_tables(url)
    await downgrade(url, "base")
    assert tables(path) == set()
    await upgrade(url)
    assert tables(path) == head_tables(url)


async def test_0003_adds_and_removes_only_the_deliveries(empty_database_url: str) -> None:
    url = path = empty_database_url
    await upgrade(url, "0003")
    assert _version(path) == "0003"
    assert "ix_deliveries_platform" in indexes(path, "deliveries")
    await downgrade(url, "0002")
    assert _version(path) == "0002"
    assert tables(path) == AFTER
    await upgrade(url, "0003")
    assert tables(path) == AFTER | {"deliveries"}


async def test_0004_keeps_seeds_and_takes_full_32_bit_ones(empty_database_url: str) -> None:
    url = empty_database_url
    await upgrade(url, "0003")
    execute(url, USER_SQL)
    execute(url, JOB_SQL.format(job="low", seed=7))
    await upgrade(url)
    assert _version(url) == HEAD_REVISION
    execute(url, JOB_SQL.format(job="high", seed=2**32 - 1))
    assert query(url, "SELECT id, seed FROM jobs ORDER BY id") == [("high", 2**32 - 1), ("low", 7)]
    await downgrade(url, "0003")
    # An INTEGER cannot hold the high seed on PostgreSQL: it is dropped, never cut to another.
    seeds = dict(query(url, "SELECT id, seed FROM jobs"))
    assert seeds["low"] == 7 and seeds["high"] in (None, 2**32 - 1)
    await upgrade(url)


async def test_0007_adds_and_removes_only_the_chat_state(empty_database_url: str) -> None:
    url = empty_database_url
    await upgrade(url, "0006")
    before = tables(url)
    await upgrade(url, "0007")
    assert tables(url) == before | {"chat_waits", "chat_inbox", "deferred_interactions"}
    assert "request_key" in columns(url, "jobs")
    assert "ix_jobs_request_key" in indexes(url, "jobs")
    await downgrade(url, "0006")
    assert tables(url) == before
    assert "request_key" not in columns(url, "jobs")
    await upgrade(url, "0007")


USER_SQL = (
    "INSERT INTO users (id, platform, platform_user_id, created_at) "
    "VALUES (1, 'test', 'u1', '2026-11-21 10:00:00')"
)
JOB_SQL = (
    "INSERT INTO jobs (id, user_id, operation, params, state, credits_reserved, seed, "
    "attempts, created_at, updated_at) VALUES ('{job}', 1, 'headshot', '{{}}', 'failed', 1, "
    "{seed}, 0, '2026-11-21 10:00:00', '2026-11-21 10:00:00')"
)


async def test_downgrade_keeps_the_ledger_and_outputs(empty_database_url: str) -> None:
    """Dropping columns copies the jobs table on SQLite; with foreign keys enforced, dropping
    the old table would cascade into the ledger and the outputs. The migration must not."""
    url = empty_database_url
    register_database(url)
    await upgrade(url)
    execute(url, USER_SQL)
    execute(
        url,
        "INSERT INTO jobs (id, user_id, operation, params, state, credits_reserved, "
        "attempts, created_at, updated_at, style, user_prompt) VALUES ('j', 1, 'headshot', "
        "'{}', 'succeeded', 1, 0, '2026-11-21 10:00:00', '2026-11-21 10:00:00', 'corporate', "
        "'blue tie')",
    )
    for kind in ("reserve", "commit"):
        execute(
            url,
            "INSERT INTO credit_ledger (user_id, job_id, kind, pool, amount, day, created_at) "
            f"VALUES (1, 'j', '{kind}', 'daily', 1, '2026-11-21', '2026-11-21 10:00:00')",
        )
    execute(
        url,
        "INSERT INTO outputs (job_id, position, content_key, public_token, content_type, "
        "width, height, size_bytes, created_at) VALUES ('j', 0, 'k.jpg', 't', 'image/jpeg', "
        "1, 1, 1, '2026-11-21 10:00:00')",
    )
    await downgrade(url, "0001")
    await upgrade(url)
    assert query(url, "SELECT count(*) FROM credit_ledger") == [(2,)]
    assert query(url, "SELECT count(*) FROM outputs") == [(1,)]
    assert query(url, "SELECT state, style FROM jobs") == [("succeeded", None)]
    if url.startswith("sqlite"):
        assert query(url, "PRAGMA foreign_key_check") == []


async def test_models_match_the_migrations(empty_database_url: str) -> None:
    """What autogenerate would write next is nothing: models.py and the versions agree.
    Procrastinate's tables are left out, as migrations/env.py leaves them out."""
    url = empty_database_url
    await upgrade(url)
    db = Database(url)
    options = {"include_name": _ours}
    try:
        async with db.read() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(sync, opts=options), Base.metadata
                )
            )
    finally:
        await db.dispose()
    assert diff == []


def _ours(name: str | None, type_: str, _parents: object) -> bool:
    return not (type_ == "table" and (name or "").startswith("procrastinate_"))


async def test_replicas_starting_together_migrate_one_at_a_time(
    empty_database_url: str, tmp_path: Path
) -> None:
    """Four processes migrating one database at once (replicas starting together): each waits
    its turn (an advisory lock on PostgreSQL, the write lock on SQLite) and finds it done."""
    env = {**os.environ, "DATABASE_URL": empty_database_url, "DATA_DIR": str(tmp_path / "data")}
    processes = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "migrate", env=env, stderr=asyncio.subprocess.PIPE
        )
        for _ in range(4)
    ]
    for process in processes:
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, stderr.decode()
    assert _version(empty_database_url) == HEAD_REVISION
    assert tables(empty_database_url) == head_tables(empty_database_url)
