"""The database engine: SQLite (WAL, writes in BEGIN IMMEDIATE) by default, PostgreSQL by URL."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

BUSY_TIMEOUT_MS = 30_000


class Database:
    """Owns the engine. `write()` is one serialised transaction; `read()` a consistent snapshot.

    Both hand out Core connections: the repositories speak SQL expressions, not ORM sessions,
    which costs a fraction of the CPU on the hot path of every job.

    On SQLite every write transaction starts with BEGIN IMMEDIATE, so a read-then-write (check a
    balance, then reserve) can never be interleaved with another writer: the second one waits
    for the lock (busy timeout) instead of failing or reading stale data. Reads start a plain
    deferred transaction and, in WAL mode, never block or wait for writers.
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
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
        self.engine: AsyncEngine = create_async_engine(url, **kwargs)
        if self.is_sqlite:
            _configure_sqlite(self.engine)
        self._write_engine = self.engine.execution_options(sqlite_begin="IMMEDIATE")
        # SQLite has one writer at a time. Writers of this process queue here, in the event loop,
        # rather than inside SQLite, whose busy handler waits by sleeping in growing steps.
        # Other processes (a CLI beside the service) still meet the busy timeout.
        self._write_turn = asyncio.Lock() if self.is_sqlite else None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """One write transaction: committed on normal exit, rolled back on an exception."""
        async with contextlib.AsyncExitStack() as stack:
            if self._write_turn is not None:
                await stack.enter_async_context(self._write_turn)
            yield await stack.enter_async_context(self._write_engine.begin())

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.begin() as connection:
            yield connection

    async def dispose(self) -> None:
        await self.engine.dispose()


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


def _configure_sqlite(engine: AsyncEngine) -> None:
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the driver so that BEGIN is ours to write.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get("sqlite_begin", "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")
