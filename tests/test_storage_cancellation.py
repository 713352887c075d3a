"""A transaction whose task is cancelled, even again while it cleans up, ends cleanly: rolled
back, its connection back in the pool, and nothing logged by SQLAlchemy's pool."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from storage.database import Database
from storage.models import AuditEntry

audit_log = AuditEntry.__table__
_ROOT = Path(__file__).resolve().parents[1]


def _checked_out(db: Database) -> int:
    # SQLAlchemy 2.0 gives SQLite files a NullPool, which keeps no count.
    count = getattr(db.engine.pool, "checkedout", None)
    return count() if count is not None else 0


async def _audit_rows(db: Database) -> int:
    async with db.read() as conn:
        return int((await conn.execute(select(func.count()).select_from(audit_log))).scalar_one())


async def _cancel_twice(db: Database, entered: asyncio.Event, task: asyncio.Task[None]) -> None:
    await entered.wait()
    task.cancel()
    # Let the cancellation reach the transaction's clean-up, then cancel that too, as a
    # shutdown that cancels every task (and then cancels again) does.
    while not task.done():
        await asyncio.sleep(0)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize("mode", ["write", "read"])
async def test_a_cancelled_transaction_rolls_back_and_returns_its_connection(
    db: Database, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.pool")
    before = await _audit_rows(db)
    entered = asyncio.Event()

    async def transaction() -> None:
        opened = db.write() if mode == "write" else db.read()
        async with opened as conn:
            if mode == "write":
                await conn.execute(
                    insert(audit_log).values(action="test", actor="tester", details={})
                )
            entered.set()
            await asyncio.sleep(30)

    for _ in range(5):
        entered.clear()
        await _cancel_twice(db, entered, asyncio.create_task(transaction()))
        # The clean-up finished before the cancelled task did: a shutdown that goes on to
        # dispose of the engine and close the loop finds no rollback still running.
        assert _checked_out(db) == 0
    assert await _audit_rows(db) == before
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not problems, [r.getMessage() for r in problems]
    async with db.write() as conn:
        await conn.execute(insert(audit_log).values(action="test", actor="tester", details={}))
    assert await _audit_rows(db) == before + 1


async def test_a_task_cancelled_while_it_opens_a_transaction_leaves_nothing_open(
    db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.pool")

    async def transaction() -> None:
        async with db.write() as conn:
            await conn.execute(insert(audit_log).values(action="test", actor="tester", details={}))

    before = await _audit_rows(db)
    for delay in range(8):
        task = asyncio.create_task(transaction())
        for _ in range(delay):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert _checked_out(db) == 0
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not problems, [r.getMessage() for r in problems]
    assert await _audit_rows(db) >= before


async def test_dispose_ends_the_transactions_still_open_first(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sqlalchemy.pool")
    db = Database(database_url)
    before = await _audit_rows(db)
    entered = asyncio.Event()

    async def stuck() -> None:
        async with db.write() as conn:
            await conn.execute(insert(audit_log).values(action="test", actor="tester", details={}))
            entered.set()
            await asyncio.sleep(30)

    task = asyncio.create_task(stuck())
    await entered.wait()
    await db.dispose(grace_seconds=0.1)
    # The task was stopped and its rollback finished before the engine closed, not left for
    # the event loop's end to cut short.
    assert task.cancelled()
    assert _checked_out(db) == 0
    problems = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not problems, [r.getMessage() for r in problems]

    async def late() -> None:
        async with db.read():
            raise AssertionError("a transaction opened after dispose")

    # A task that asks for the database once it is closing ends there, as a cancelled one.
    late_task = asyncio.create_task(late())
    with pytest.raises(asyncio.CancelledError):
        await late_task
    fresh = Database(database_url)
    try:
        assert await _audit_rows(fresh) == before
    finally:
        await fresh.dispose()


_SHUTDOWN = """
import asyncio, sys
from sqlalchemy import insert
from storage.database import Database
from storage.models import AuditEntry

async def service():
    db = Database(sys.argv[1])
    async def deliveries():
        while True:
            async with db.write() as conn:
                await conn.execute(
                    insert(AuditEntry.__table__).values(action="t", actor="a", details={})
                )
                await asyncio.sleep(0.001)
            async with db.read():
                await asyncio.sleep(0.001)
    for _ in range(10):
        asyncio.create_task(deliveries())
    await asyncio.sleep(0.05)
    await db.dispose()  # what the service's stop does; the loop's end cancels what is left

for _ in range(30):
    asyncio.run(service())
"""


async def test_stopping_while_transactions_run_logs_no_pool_traceback(database_url: str) -> None:
    # Thirty stops of a process with ten tasks inside transactions: before `dispose` ended them
    # first, most runs logged "Exception during reset or similar ... CancelledError".
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SHUTDOWN,
        database_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=_ROOT,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 100)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert b"Traceback" not in stderr, stderr.decode()[-2000:]


async def test_a_transaction_inside_another_in_one_task_works(db: Database) -> None:
    before = await _audit_rows(db)
    async with db.write() as conn:
        await conn.execute(insert(audit_log).values(action="test", actor="tester", details={}))
        async with db.read() as inner:
            await inner.execute(select(1))
    assert await _audit_rows(db) == before + 1
