"""Migration 0002 (the command layer) on a real SQLite file: up, down, up again, and the models
matching what the migrations build."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from storage.database import Database
from storage.migrate import downgrade, upgrade
from storage.models import Base
from tests.conftest import register_database

BEFORE = {"users", "communities", "jobs", "outputs", "credit_ledger", "audit_log"}
AFTER = BEFORE | {"scoped_settings", "bans", "forgotten_usage"}
HEAD = AFTER | {"deliveries"}
NEW_JOB_COLUMNS = {"style", "user_prompt", "deleted_at", "inputs_expire_at"}


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
    return {name for (name,) in rows} - {"alembic_version"}


def _columns(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}


def _indexes(path: Path, table: str) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[1] for row in conn.execute(f"PRAGMA index_list({table})")}


def _version(path: Path) -> str:
    with sqlite3.connect(path) as conn:
        return str(conn.execute("SELECT version_num FROM alembic_version").fetchone()[0])


async def test_0002_up_down_up(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade(url, "0001")
    assert _tables(path) == BEFORE
    assert not NEW_JOB_COLUMNS & _columns(path, "jobs")

    await upgrade(url, "0002")
    assert _version(path) == "0002"
    assert _tables(path) == AFTER
    assert _columns(path, "jobs") >= NEW_JOB_COLUMNS
    assert "ix_jobs_inputs_expire_at" in _indexes(path, "jobs")
    assert "ix_scoped_settings_scope" in _indexes(path, "scoped_settings")
    assert "ix_bans_subject" in _indexes(path, "bans")
    assert "ix_forgotten_usage_subject" in _indexes(path, "forgotten_usage")

    await downgrade(url, "0001")
    assert _version(path) == "0001"
    assert _tables(path) == BEFORE
    assert not NEW_JOB_COLUMNS & _columns(path, "jobs")
    assert {"ix_jobs_state", "ix_jobs_user_created"} <= _indexes(path, "jobs")

    await upgrade(url, "0002")
    assert _tables(path) == AFTER
    assert _columns(path, "jobs") >= NEW_JOB_COLUMNS


async def test_base_to_head_and_back(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade(url)
    assert _tables(path) == HEAD
    await downgrade(url, "base")
    assert _tables(path) == set()
    await upgrade(url)
    assert _tables(path) == HEAD


async def test_0003_adds_and_removes_only_the_deliveries(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    url = f"sqlite+aiosqlite:///{path}"
    await upgrade(url)
    assert _version(path) == "0003"
    assert "ix_deliveries_platform" in _indexes(path, "deliveries")
    await downgrade(url, "0002")
    assert _version(path) == "0002"
    assert _tables(path) == AFTER
    await upgrade(url)
    assert _tables(path) == HEAD


async def test_downgrade_keeps_the_ledger_and_outputs(tmp_path: Path) -> None:
    """Dropping columns copies the jobs table on SQLite; with foreign keys enforced, dropping
    the old table would cascade into the ledger and the outputs. The migration must not."""
    path = tmp_path / "m.db"
    url = f"sqlite+aiosqlite:///{path}"
    register_database(url)
    await upgrade(url)
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO users (id, platform, platform_user_id, created_at) "
            "VALUES (1, 'test', 'u1', '2026-11-21 10:00:00')"
        )
        conn.execute(
            "INSERT INTO jobs (id, user_id, operation, params, state, credits_reserved, "
            "attempts, created_at, updated_at, style, user_prompt) VALUES ('j', 1, 'headshot', "
            "'{}', 'succeeded', 1, 0, '2026-11-21 10:00:00', '2026-11-21 10:00:00', 'corporate', "
            "'blue tie')"
        )
        conn.executemany(
            "INSERT INTO credit_ledger (user_id, job_id, kind, pool, amount, day, created_at) "
            "VALUES (1, 'j', ?, 'daily', 1, '2026-11-21', '2026-11-21 10:00:00')",
            [("reserve",), ("commit",)],
        )
        conn.execute(
            "INSERT INTO outputs (job_id, position, content_key, public_token, content_type, "
            "width, height, size_bytes, created_at) VALUES ('j', 0, 'k.jpg', 't', 'image/jpeg', "
            "1, 1, 1, '2026-11-21 10:00:00')"
        )
    await downgrade(url, "0001")
    await upgrade(url)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM credit_ledger").fetchone() == (2,)
        assert conn.execute("SELECT count(*) FROM outputs").fetchone() == (1,)
        assert conn.execute("SELECT state, style FROM jobs").fetchall() == [("succeeded", None)]
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []


async def test_models_match_the_migrations(tmp_path: Path) -> None:
    """What autogenerate would write next is nothing: models.py and the versions agree."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    await upgrade(url)
    db = Database(url)
    try:
        async with db.read() as conn:
            diff = await conn.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync), Base.metadata)
            )
    finally:
        await db.dispose()
    assert diff == []
