"""Group commit: on SQLite, this process's writers that queue for the one write lock share
transactions.

SQLite has one writer at a time, so the writers of this process take turns, in the event loop
(rather than in SQLite's busy handler, which waits by sleeping). A writer that ends its turn
while others wait does not commit: it hands its open transaction to the next, and one COMMIT
ends a chain of up to MAX_WRITERS of them. So a burst commits once per chain instead of once
per write: a thread hop saved per write, and under SQLITE_SYNCHRONOUS=FULL an fsync.

Nothing is weakened:
- each writer's statements run in a savepoint of their own, so a writer that fails is rolled
  back alone and the chain goes on without it;
- a writer returns only once the COMMIT holding its writes has ended: whatever it answers
  (a request acknowledged, a job started) is on disk first. If that COMMIT fails, every
  writer in the chain gets the error, as if its own commit had failed.

A savepoint costs no hop: the driver sends its SAVEPOINT with the writer's first statement, and
the COMMIT releases it (`storage/sqlite_driver.py`); only a writer that fails costs one, for its
ROLLBACK TO.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.sqlite_driver import Connection as SQLiteConnection
from storage.transactions import begin, end, run_to_end

# Writers in one transaction at most: a bound on how long the first of them waits for its
# COMMIT (each writer's turn is a few statements).
MAX_WRITERS = 32


@dataclass(eq=False)
class _Chain:
    """One transaction, shared by the writers that took turns in it."""

    connection: AsyncConnection
    driver: SQLiteConnection
    committed: asyncio.Future[None]
    writers: int = 0
    # Why the chain cannot be committed: a failed writer whose savepoint could not be rolled
    # back (SQLite had already rolled the whole transaction back, say).
    broken: BaseException | None = None


class GroupCommit:
    """`async with group.writing() as conn:` one writer's turn, committed with its chain."""

    def __init__(self, engine: AsyncEngine, *, max_writers: int = MAX_WRITERS) -> None:
        self._engine = engine
        self._max_writers = max_writers
        self._held = False
        # Writers waiting for their turn: each is given the open chain, or None to begin one.
        self._waiting: deque[asyncio.Future[_Chain | None]] = deque()
        self._commits: set[asyncio.Task[None]] = set()
        # Writers' turns, and the transactions (chains) that held them: for tests and benchmarks.
        self.writes = 0
        self.transactions = 0

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncConnection]:
        chain = await self._take_turn()
        chain.writers += 1
        self.writes += 1
        savepoint = f"writer_{chain.writers}"
        chain.driver.savepoint(savepoint)
        try:
            yield chain.connection
        except BaseException:
            undoing = chain.connection.exec_driver_sql(f"ROLLBACK TO SAVEPOINT {savepoint}")
            ending, _ = await run_to_end(undoing)
            chain.broken = chain.broken or ending.exception()
            self._pass_on(chain)
            # Returns once the connection is back in the pool, as a transaction of its own would.
            await run_to_end(_ended(chain.committed))
            raise
        self._pass_on(chain)
        # This writer's writes are the chain's: they are kept when its COMMIT is.
        committed, cancelled = await run_to_end(_outcome(chain.committed))
        committed.result()
        if cancelled:
            raise asyncio.CancelledError

    async def wait_idle(self) -> None:
        """Until every chain's COMMIT has ended (before the engine is disposed)."""
        while self._commits:
            await asyncio.gather(*list(self._commits), return_exceptions=True)

    async def _take_turn(self) -> _Chain:
        """This writer's turn: in the chain handed over by the one before, or a new one."""
        if self._held or self._waiting:
            waiter: asyncio.Future[_Chain | None] = asyncio.get_running_loop().create_future()
            self._waiting.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._pass_on(waiter.result())  # given the turn as it was cancelled
                else:
                    with contextlib.suppress(ValueError):
                        self._waiting.remove(waiter)
                raise
            if handed is not None:
                return handed
        self._held = True
        opening, interrupted = await run_to_end(begin(self._engine))
        if interrupted or opening.exception() is not None:
            if opening.exception() is None:
                await run_to_end(end(opening.result(), commit=False))
            self._pass_on(None)
            opening.result()
            raise asyncio.CancelledError
        connection = opening.result()
        raw = await connection.get_raw_connection()
        committed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # A chain whose writers all failed has nobody waiting for its outcome.
        committed.add_done_callback(_retrieved)
        return _Chain(connection, raw.dbapi_connection, committed)  # type: ignore[arg-type]

    def _pass_on(self, chain: _Chain | None) -> None:
        """End a turn: the next waiting writer goes on in the open chain, unless the chain is
        full or broken (or nobody waits): then it is ended, and the turn passes after that."""
        if chain is not None and (
            chain.broken is not None
            or chain.writers >= self._max_writers
            or not any(not waiter.done() for waiter in self._waiting)
        ):
            task = asyncio.ensure_future(self._end(chain))
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)
            return
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(chain)
                return
        self._held = False

    async def _end(self, chain: _Chain) -> None:
        outcome: BaseException | None = chain.broken
        try:
            await end(chain.connection, commit=outcome is None)
        except BaseException as exc:  # handed to every writer of the chain
            outcome = outcome or exc
        self.transactions += 1
        if outcome is None:
            chain.committed.set_result(None)
        elif isinstance(outcome, asyncio.CancelledError):
            chain.committed.cancel()
        else:
            chain.committed.set_exception(outcome)
        self._pass_on(None)


async def _outcome(future: asyncio.Future[None]) -> None:
    await future


async def _ended(future: asyncio.Future[None]) -> None:
    """Until `future` is done, whatever its outcome."""
    await asyncio.wait((future,))


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
