"""The database engine: SQLite (WAL, writes in BEGIN IMMEDIATE) by default, PostgreSQL by URL."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from storage import sqlite_driver
from storage.group_commit import GroupCommit
from storage.transactions import transaction

T = TypeVar("T")
BUSY_TIMEOUT_MS = 30_000
# NORMAL: in WAL mode a commit is durable once the WAL is synced, at the next checkpoint; a power
# cut (not a process crash) may lose the last commits but never corrupts. FULL: every commit is
# synced before it returns.
SQLITE_SYNCHRONOUS = ("NORMAL", "FULL")
sqlite_driver.register()

log = logging.getLogger(__name__)


class Database:
    """Owns the engine. `write()` is one serialised write (on SQLite it may share its COMMIT
    with the writes queued behind it: storage/group_commit.py); `read()` a consistent snapshot.

    Both hand out Core connections: the repositories speak SQL expressions, not ORM sessions,
    which costs a fraction of the CPU on the hot path of every job.

    On SQLite every write transaction starts with BEGIN IMMEDIATE, so a read-then-write (check a
    balance, then reserve) can never be interleaved with another writer: the second one waits
    for the lock (busy timeout) instead of failing or reading stale data. Reads start a plain
    deferred transaction and, in WAL mode, never block or wait for writers.
    """

    def __init__(self, url: str, *, echo: bool = False, sqlite_synchronous: str = "NORMAL") -> None:
        if sqlite_synchronous not in SQLITE_SYNCHRONOUS:
            raise ValueError(f"SQLITE_SYNCHRONOUS must be one of {', '.join(SQLITE_SYNCHRONOUS)}")
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        kwargs: dict[str, Any] = {"echo": echo}
        if self.is_sqlite:
            database = parsed.database or ""
            if database in ("", ":memory:"):
                raise ValueError("DATABASE_URL must name a SQLite file, not an in-memory database")
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_MS / 1000}
        else:
            # A replica serves many jobs at once; each transaction holds a connection briefly.
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20)
        engine_url = parsed
        if self.is_sqlite:
            engine_url = parsed.set(drivername=f"sqlite+{sqlite_driver.DRIVER_NAME}")
        self.engine: AsyncEngine = create_async_engine(engine_url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine, sqlite_synchronous)
        self._write_engine = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        # SQLite has one writer at a time. Writers of this process queue here, in the event loop,
        # and share COMMITs (storage/group_commit.py). Other processes (a CLI beside the
        # service) still meet the busy timeout.
        self.group_commit = GroupCommit(self._write_engine) if self.is_sqlite else None
        # Each open transaction: a future done when it ends (`dispose` waits), and its task.
        self._open: dict[asyncio.Future[None], asyncio.Task[Any]] = {}
        self._closing = False

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed on normal exit, rolled back on an exception. On
        SQLite it may share its COMMIT with the writers queued behind it (group commit); it
        returns once that COMMIT has ended."""
        async with self._tracked():
            if self.group_commit is not None:
                async with self.group_commit.writing() as connection:
                    yield connection
            else:
                async with transaction(self._write_engine) as connection:
                    yield connection

    async def run_write(self, body: Callable[[AsyncConnection], Coroutine[Any, Any, T]]) -> T:
        """One write transaction, as `write()`, whose statements are `body(conn)`: `body`
        awaits nothing but statements on `conn`. On SQLite it then runs whole in the
        database's thread, one hop instead of one per statement, so the one write lock is held
        that much less long (storage/group_commit.py)."""
        async with self._tracked():
            if self.group_commit is not None:
                return await self.group_commit.run(body)
            async with transaction(self._write_engine) as connection:
                return await body(connection)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self._tracked(), transaction(self.engine) as connection:
            yield connection

    async def dispose(self, *, grace_seconds: float = 2.0) -> None:
        """Close the engine once no transaction is open. Those still open after the grace
        period are cancelled at their next await and waited for: their rollback must finish
        in this event loop, not be cut short when the loop ends (a stopping service would
        otherwise log a pool traceback for each)."""
        self._closing = True
        others = {
            ended: task for ended, task in self._open.items() if task is not asyncio.current_task()
        }
        for cancel in (False, True):
            still_open = [ended for ended in others if not ended.done()]
            if not still_open:
                break
            if cancel:
                for ended in still_open:
                    others[ended].cancel()
            await asyncio.wait(still_open, timeout=grace_seconds)
        if self.group_commit is not None:
            await self.group_commit.wait_idle()
        await self.engine.dispose()

    @asynccontextmanager
    async def _tracked(self) -> AsyncIterator[None]:
        """A transaction's lifetime, known to `dispose`."""
        if self._closing:
            # The service is stopping: the task ends here, as if cancelled, before it takes a
            # connection that the loop's end would cut short.
            raise asyncio.CancelledError
        task = asyncio.current_task()
        assert task is not None
        # Keyed by its own future, not by the task: a task may open one inside another.
        ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._open[ended] = task
        try:
            yield
        finally:
            del self._open[ended]
            ended.set_result(None)


# The package extra that installs each database's driver.
_DRIVER_EXTRAS = {"postgresql": "postgres"}


def missing_driver(url: str) -> str | None:
    """What to install when the URL's database driver is not importable, else None."""
    parsed = make_url(url)
    try:
        parsed.get_dialect(_is_async=True).import_dbapi()
    except ImportError:
        backend = parsed.get_backend_name()
        extra = _DRIVER_EXTRAS.get(backend)
        how = f"pip install 'headshot-bot[{extra}]'" if extra else "reinstall headshot-bot"
        return f"the {parsed.get_driver_name()} driver for {backend} is not installed: {how}"
    return None


def _configure_sqlite(engine: AsyncEngine, synchronous: str) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so that BEGIN is ours to write.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")
