"""SQLite's group commit (storage/group_commit.py): writers queued for the write lock share a
COMMIT, a failing writer is rolled back alone, and nobody returns before its COMMIT; bodies
queued together run in one hop, in the database's thread."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

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


def _hops(db: Database) -> int:
    group = db.group_commit
    assert group is not None
    return group.hops


async def _insert_note(conn: AsyncConnection, body: str) -> int:
    await conn.execute(text("INSERT INTO notes (body) VALUES (:body)"), {"body": body})
    return threading.get_ident()


async def _held_turn(
    db: Database, held: asyncio.Event, release: asyncio.Event, body: str = "first"
) -> None:
    """A writer that holds its turn until released, so that others queue behind it."""
    async with db.write() as conn:
        await _insert_note(conn, body)
        held.set()
        await release.wait()


async def test_bodies_queued_together_run_in_one_hop_in_the_database_thread(
    db: Database,
) -> None:
    held, release = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(_held_turn(db, held, release))
    await held.wait()
    writes, commits = _counts(db)
    hops = _hops(db)
    bodies = [f"note {k}" for k in range(WRITERS)]
    runs = [
        asyncio.create_task(db.run_write(functools.partial(_insert_note, body=body)))
        for body in bodies
    ]
    await asyncio.sleep(0.01)  # every one of them queued behind the held turn
    release.set()
    threads = await asyncio.gather(*runs)
    await first
    assert await _bodies(db) == {"first", *bodies}
    # All ran in the connection's own thread, none in the event loop's.
    assert len(set(threads)) == 1 and threads[0] != threading.get_ident()
    # The first of them ran the others' bodies in its own hop, and they all shared the held
    # turn's transaction.
    assert _hops(db) - hops == 1
    assert _counts(db) == (writes + WRITERS, commits + 1)


async def test_a_body_that_fails_is_rolled_back_alone_among_those_run_with_it(
    db: Database,
) -> None:
    async with db.write() as conn:
        await conn.execute(text("INSERT INTO notes (body) VALUES ('taken')"))

    class Refused(Exception):
        pass

    async def body(conn: AsyncConnection, k: int) -> str:
        await _insert_note(conn, f"note {k}")
        if k == 3:
            raise Refused  # after writing: its row must go
        if k == 7:
            await _insert_note(conn, "taken")  # the database refuses this one
        if k == 9:
            await asyncio.sleep(0)  # not a statement: it cannot run in the database thread
        return f"note {k}"

    held, release = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(_held_turn(db, held, release))
    await held.wait()
    hops = _hops(db)
    runs = [asyncio.create_task(db.run_write(functools.partial(body, k=k))) for k in range(12)]
    await asyncio.sleep(0.01)
    release.set()
    outcomes = await asyncio.gather(*runs, return_exceptions=True)
    await first
    assert isinstance(outcomes[3], Refused)
    assert isinstance(outcomes[7], IntegrityError)
    assert isinstance(outcomes[9], RuntimeError)
    assert "awaited something other than a statement" in str(outcomes[9])
    kept = {f"note {k}" for k in range(12) if k not in (3, 7, 9)}
    assert {o for k, o in enumerate(outcomes) if k not in (3, 7, 9)} == kept
    assert await _bodies(db) == kept | {"taken", "first"}
    assert _hops(db) - hops == 1


async def test_a_writer_cancelled_as_its_body_runs_keeps_it_and_hears_after_the_commit(
    db: Database,
) -> None:
    """Its body has run in the database's thread (or is running): that cannot be stopped, so
    its writes are kept, and the cancellation comes once their COMMIT has ended. One cancelled
    while it still waits for its turn writes nothing."""
    started, proceed = threading.Event(), threading.Event()

    async def slow(conn: AsyncConnection) -> None:
        await _insert_note(conn, "slow")
        started.set()
        proceed.wait(timeout=5)  # in the database's thread: the event loop goes on

    held, release = asyncio.Event(), asyncio.Event()
    first = asyncio.create_task(_held_turn(db, held, release))
    await held.wait()
    running = asyncio.create_task(db.run_write(slow))
    riding = asyncio.create_task(db.run_write(functools.partial(_insert_note, body="rider")))
    await asyncio.sleep(0.01)
    release.set()
    while not started.is_set():
        await asyncio.sleep(0.005)
    # `running` leads the hop, `riding`'s body is in it: both are cancelled mid-hop.
    running.cancel()
    riding.cancel()
    await asyncio.sleep(0.01)
    assert not running.done() and not riding.done()  # they wait for the hop, and the COMMIT
    proceed.set()
    for task in (running, riding):
        with pytest.raises(asyncio.CancelledError):
            await task
    await first
    # Seen from another connection as soon as they returned: committed first.
    assert await _bodies(db) == {"first", "slow", "rider"}

    held, release = asyncio.Event(), asyncio.Event()
    again = asyncio.create_task(_held_turn(db, held, release, "again"))
    await held.wait()
    waiting = asyncio.create_task(db.run_write(functools.partial(_insert_note, body="never")))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    await again
    await db.run_write(functools.partial(_insert_note, body="after"))
    assert "never" not in await _bodies(db)
    assert "after" in await _bodies(db)


def _sealed(db: Database) -> int:
    group = db.group_commit
    assert group is not None
    return group.sealed


async def test_a_body_nobody_waits_behind_is_committed_in_its_own_hop(db: Database) -> None:
    writes, commits = _counts(db)
    hops, sealed = _hops(db), _sealed(db)
    await db.run_write(functools.partial(_insert_note, body="alone"))
    assert "alone" in await _bodies(db)  # seen from another connection: committed
    assert (_hops(db) - hops, _sealed(db) - sealed) == (1, 1)
    assert _counts(db) == (writes + 1, commits + 1)


async def test_writers_that_come_during_a_sealed_hop_wait_for_the_next_transaction(
    db: Database,
) -> None:
    """The first body's COMMIT is in its hop: a writer that comes meanwhile cannot join that
    transaction, and gets its own, whole or not at all."""
    started, proceed = threading.Event(), threading.Event()

    async def slow(conn: AsyncConnection) -> None:
        await _insert_note(conn, "slow")
        started.set()
        proceed.wait(timeout=5)  # in the database's thread: the event loop goes on

    class Refused(Exception):
        pass

    async def undone() -> None:
        async with db.write() as conn:
            await _insert_note(conn, "undone")
            raise Refused  # after writing: its row must go

    sealed = _sealed(db)
    running = asyncio.create_task(db.run_write(slow))
    while not started.is_set():
        await asyncio.sleep(0.005)
    late = asyncio.create_task(undone())
    later = asyncio.create_task(db.run_write(functools.partial(_insert_note, body="later")))
    await asyncio.sleep(0.01)
    assert not late.done() and not later.done()  # they wait for the sealed hop to end
    proceed.set()
    await running
    with pytest.raises(Refused):
        await late
    await later
    assert await _bodies(db) == {"slow", "later"}
    assert _sealed(db) - sealed == 2  # the first hop, and the last writer's own


async def test_a_commit_that_fails_in_its_hop_fails_its_writer_and_keeps_nothing(
    db: Database,
) -> None:
    async def orphan(conn: AsyncConnection) -> None:
        # A deferred foreign key: refused only by the COMMIT, which runs in this hop.
        await conn.execute(text("INSERT INTO children (id, parent_id) VALUES (1, 999)"))
        await _insert_note(conn, "with the orphan")

    sealed = _sealed(db)
    with pytest.raises(IntegrityError):
        await db.run_write(orphan)
    assert _sealed(db) == sealed
    assert await _bodies(db) == set()
    await db.run_write(functools.partial(_insert_note, body="after"))
    assert await _bodies(db) == {"after"}
