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

A writer whose statements are a body that awaits nothing but them (`run`) goes further: the body
runs whole in SQLite's thread, so the write lock is held for one hop rather than one per
statement (each hop waits for the busy event loop to come round, twice). And the writer whose
turn it is runs the bodies of the `run` writers queued right behind it in the same hop, each in
its savepoint: a burst's writes then hold the lock for the time SQLite and SQLAlchemy take,
not for the loop's. A body whose writer is cancelled once it has run is kept: the writer hears
of the cancellation after the COMMIT, as one cancelled while waiting for its COMMIT does.

When no other writer waits as such a hop begins, its COMMIT goes in the hop too (the chain is
sealed: a writer that comes meanwhile waits for the next), one hop instead of two for a write
at light load.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from storage.sqlite_driver import Connection as SQLiteConnection
from storage.sqlite_driver import Outcome
from storage.transactions import begin, end, run_to_end

T = TypeVar("T")
Body = Callable[[AsyncConnection], Coroutine[Any, Any, Any]]

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
    # back (SQLite had already rolled the whole transaction back, say), or its COMMIT failed.
    broken: BaseException | None = None
    # Committed in its last writer's hop: nobody else may join it.
    sealed: bool = False

    def savepoint(self) -> str:
        """The next writer's savepoint, named for its place in the chain."""
        self.writers += 1
        return f"writer_{self.writers}"


@dataclass(frozen=True)
class _Served:
    """A `run` writer's body, run by the writer ahead of it in its own hop: its outcome."""

    chain: _Chain
    outcome: Outcome


@dataclass(eq=False)
class _Waiter:
    """A writer waiting for its turn: `turn` is given the open chain, None to begin one, or
    (a `run` writer's) its body's outcome once the writer ahead has run it."""

    turn: asyncio.Future[_Chain | _Served | None]
    body: Body | None = None
    # Taken by the writer ahead, whose hop runs `body`: its outcome is to come.
    taken: bool = False


class GroupCommit:
    """`async with group.writing() as conn:` one writer's turn, committed with its chain;
    `await group.run(body)` one whose statements are `body(conn)`."""

    def __init__(self, engine: AsyncEngine, *, max_writers: int = MAX_WRITERS) -> None:
        self._engine = engine
        self._max_writers = max_writers
        self._held = False
        self._waiting: deque[_Waiter] = deque()
        self._commits: set[asyncio.Task[None]] = set()
        # Writers' turns, the transactions (chains) that held them, the hops that ran `run`
        # writers' bodies, and the chains committed in such a hop: for tests and benchmarks.
        self.writes = 0
        self.transactions = 0
        self.hops = 0
        self.sealed = 0

    @asynccontextmanager
    async def writing(self) -> AsyncIterator[AsyncConnection]:
        given = await self._take_turn()
        assert isinstance(given, _Chain)
        chain = given
        self.writes += 1
        savepoint = chain.savepoint()
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
        await self._kept(chain, cancelled=False)

    async def run(self, body: Callable[[AsyncConnection], Coroutine[Any, Any, T]]) -> T:
        """One writer's turn, as `writing`, whose statements are `body(conn)`, run whole in
        SQLite's thread, together with the bodies of the `run` writers queued behind it."""
        given = await self._take_turn(body)
        if isinstance(given, _Served):
            return await self._result(given.chain, given.outcome, cancelled=False)
        chain = given
        riders = self._riders(chain)
        steps = [
            (chain.savepoint(), functools.partial(each, chain.connection))
            for each in (body, *(ridden for _, ridden in riders))
        ]
        self.writes += len(steps)
        self.hops += 1
        chain.sealed = not self._waiting and chain.broken is None
        ran, cancelled = await run_to_end(
            _outcome(chain.driver.run_each(steps, commit=chain.sealed))
        )
        if ran.exception() is not None:  # the hop itself failed: nothing can be trusted
            error = ran.exception()
            outcomes: list[Outcome] = [(None, error)] * len(steps)
            chain.broken = chain.broken or error
        else:
            outcomes, broken = ran.result()
            chain.broken = chain.broken or _as_raised(broken)
        if chain.sealed and chain.broken is None:
            self.sealed += 1
        self._pass_on(chain)
        for (waiter, _), outcome in zip(riders, outcomes[1:], strict=True):
            waiter.turn.set_result(_Served(chain, outcome))
        return await self._result(chain, outcomes[0], cancelled=cancelled)

    async def wait_idle(self) -> None:
        """Until every chain's COMMIT has ended (before the engine is disposed)."""
        while self._commits:
            await asyncio.gather(*list(self._commits), return_exceptions=True)

    async def _result(self, chain: _Chain, outcome: Outcome, *, cancelled: bool) -> Any:
        """A `run` writer's answer once its chain has ended: its body's error (rolled back to
        its savepoint), or its value once the COMMIT holding its writes has ended."""
        value, error = outcome
        if error is not None:
            await run_to_end(_ended(chain.committed))
            raise error
        await self._kept(chain, cancelled=cancelled)
        return value

    async def _kept(self, chain: _Chain, *, cancelled: bool) -> None:
        """Until the COMMIT holding this writer's writes has ended; they are kept when it is."""
        committed, interrupted = await run_to_end(_outcome(chain.committed))
        committed.result()
        if cancelled or interrupted:
            raise asyncio.CancelledError

    def _riders(self, chain: _Chain) -> list[tuple[_Waiter, Body]]:
        """The `run` writers queued right behind this one, as many as the chain has room for
        beside it, with their bodies: taken from the queue, to run in this writer's hop."""
        room = self._max_writers - chain.writers - 1
        riders: list[tuple[_Waiter, Body]] = []
        while self._waiting and len(riders) < room:
            waiter = self._waiting[0]
            if waiter.body is None:
                break
            self._waiting.popleft()
            waiter.taken = True
            riders.append((waiter, waiter.body))
        return riders

    async def _take_turn(self, body: Body | None = None) -> _Chain | _Served:
        """This writer's turn: in the chain handed over by the one before, or a new one; or,
        for a `run` writer, its body's outcome when the writer ahead ran it."""
        if self._held or self._waiting:
            waiter = _Waiter(asyncio.get_running_loop().create_future(), body)
            self._waiting.append(waiter)
            try:
                # Shielded: a cancelled writer's turn may still come, and be passed on.
                handed = await asyncio.shield(waiter.turn)
            except asyncio.CancelledError:
                if waiter.taken:
                    # The writer ahead is running its body: that is kept (see the module's
                    # docstring), and the cancellation heard after its COMMIT.
                    served, _ = await run_to_end(_outcome(waiter.turn))
                    await run_to_end(_ended(served.result().chain.committed))  # type: ignore[union-attr]
                elif waiter.turn.done():
                    self._pass_on(waiter.turn.result())  # type: ignore[arg-type]
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
        sealed, full or broken (or nobody waits): then it is ended, and the turn passes after
        that."""
        if chain is not None and (
            chain.sealed
            or chain.broken is not None
            or chain.writers >= self._max_writers
            or not self._waiting
        ):
            task = asyncio.ensure_future(self._end(chain))
            self._commits.add(task)
            task.add_done_callback(self._commits.discard)
            return
        if self._waiting:
            self._waiting.popleft().turn.set_result(chain)
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


def _as_raised(error: BaseException | None) -> BaseException | None:
    """A DB-API error from the hop (its COMMIT, a savepoint's rollback) as SQLAlchemy raises
    one from a statement: IntegrityError, OperationalError and so on."""
    if isinstance(error, sqlite3.Error):
        return DBAPIError.instance(None, None, error, sqlite3.Error)
    return error


async def _outcome(future: asyncio.Future[T]) -> T:
    return await future


async def _ended(future: asyncio.Future[None]) -> None:
    """Until `future` is done, whatever its outcome."""
    await asyncio.wait((future,))


def _retrieved(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
