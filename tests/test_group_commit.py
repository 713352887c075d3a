"""SQLite's group commit (storage/group_commit.py): writers queued for the write lock share a
COMMIT, a failing writer is rolled back alone, and nobody returns before its COMMIT."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from storage.database import Database
from tests.databases import sqlite_url

WRITERS = 12


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(sqlite_url(tmp_path / "group.db"))
    async with database.write() as conn:
        await conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT UNIQUE)"))
        await conn.execute(text("CREATE TABLE parents (id INTEGER PRIMARY KEY)"))
        await conn.execute(
            text(
                "CREATE TABLE children (id INTEGER PRIMARY KEY, parent_id INTEGER NOT NULL "
                "REFERENCES parents (id) DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    try:
        yield database
    finally:
        await database.dispose()


async def _bodies(db: Database) -> set[str]:
    async with db.read() as conn:
        return set((await conn.execute(text("SELECT body FROM notes"))).scalars())


def _counts(db: Database) -> tuple[int, int]:
    group = db.group_commit
    assert group is not None
    return group.writes, group.transactions


async def test_writers_queued_together_share_a_commit_and_see_it_done(db: Database) -> None:
    seen_after_return: dict[str, bool] = {}

    async def writer(body: str) -> None:
        async with db.write() as conn:
            await conn.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})
        # Returned: its COMMIT has ended, so another connection sees the row.
        seen_after_return[body] = body in await _bodies(db)

    writes, commits = _counts(db)
    bodies = [f"note {k}" for k in range(WRITERS)]
    await asyncio.gather(*(writer(body) for body in bodies))
    assert await _bodies(db) == set(bodies)
    assert seen_after_return == dict.fromkeys(bodies, True)
    new_writes, new_commits = _counts(db)
    assert new_writes - writes == WRITERS
    # Queued behind the first, the others joined its transaction: fewer COMMITs than writes.
    assert 1 <= new_commits - commits < WRITERS


async def test_a_failing_writer_is_rolled_back_alone(db: Database) -> None:
    async with db.write() as conn:
        await conn.execute(text("INSERT INTO notes (body) VALUES ('taken')"))

    class Refused(Exception):
        pass

    async def writer(k: int) -> str:
        async with db.write() as conn:
            await conn.execute(text("INSERT INTO notes (body) VALUES (:b)"), {"b": f"note {k}"})
            if k == 3:
                raise Refused  # after writing: its row must go
            if k == 7:
                # The database refuses this one (a duplicate), after its first row was written.
                await conn.execute(text("INSERT INTO notes (body) VALUES ('taken')"))
        return f"note {k}"

    writes, commits = _counts(db)
    outcomes = await asyncio.gather(*(writer(k) for k in range(WRITERS)), return_exceptions=True)
    assert isinstance(outcomes[3], Refused)
    assert isinstance(outcomes[7], IntegrityError)
    kept = {f"note {k}" for k in range(WRITERS) if k not in (3, 7)}
    assert [o for k, o in enumerate(outcomes) if k not in (3, 7)] == sorted(
        kept, key=lambda body: int(body.split()[1])
    )
    assert await _bodies(db) == kept | {"taken"}
    new_writes, new_commits = _counts(db)
    assert new_commits - commits < new_writes - writes  # they did share transactions


async def test_a_failed_commit_fails_every_writer_of_its_transaction(db: Database) -> None:
    """A deferred foreign key is checked at COMMIT: one orphan fails the shared COMMIT, and
    every writer in it hears so; none of their rows is kept. The next write works."""

    async def parent(k: int) -> None:
        async with db.write() as conn:
            await conn.execute(text("INSERT INTO parents (id) VALUES (:k)"), {"k": k})

    async def orphan() -> None:
        async with db.write() as conn:
            await conn.execute(text("INSERT INTO children (id, parent_id) VALUES (1, 999)"))

    async def first() -> None:
        # Holds the first turn until the others queue behind it, so all share one COMMIT.
        async with db.write() as conn:
            await conn.execute(text("INSERT INTO parents (id) VALUES (100)"))
            await asyncio.sleep(0.05)

    writes, commits = _counts(db)
    outcomes = await asyncio.gather(
        first(), *(parent(k) for k in range(3)), orphan(), return_exceptions=True
    )
    assert _counts(db) == (writes + 5, commits + 1)
    assert all(isinstance(outcome, IntegrityError) for outcome in outcomes), outcomes
    async with db.read() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM parents"))).scalar_one() == 0
    await parent(5)
    async with db.read() as conn:
        assert (await conn.execute(text("SELECT id FROM parents"))).scalars().all() == [5]
