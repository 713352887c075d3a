"""What the processes sharing one database agree on: who may run as the service, and which one
does a piece of work that must happen once at a time.

One interface, two implementations, chosen once at start-up from the database URL:

- **SQLite** (`FileCoordination`): one machine, one service. `headshot-bot run` holds an
  exclusive lock on a file beside the database for as long as it runs, so a second `run` on
  the same file refuses to start instead of driving the same jobs and paying twice. Being the
  only service, it is always the one to do once-only work.
- **PostgreSQL** (`PostgresCoordination`): any number of replicas. Once-only work goes to the
  replica holding a session-level advisory lock, on a connection of its own that lives as long
  as the replica: a replica that dies loses its locks with its connection, and another takes
  them over. (Advisory locks need session-level connections: not PgBouncer in transaction
  pooling mode.)
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

from sqlalchemy import func, select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine


class ServiceAlreadyRunning(Exception):
    """Another process runs as the service on this SQLite database. The message says which."""


class Coordination(Protocol):
    async def claim_service(self) -> None:
        """Start running as the service (`headshot-bot run`). Raises ServiceAlreadyRunning
        where only one may (SQLite)."""
        ...

    async def try_lock(self, name: str) -> bool:
        """Whether this process holds the lock `name` now (taking it if it is free). Held until
        `unlock` or `aclose`; asking again while holding it is True."""
        ...

    async def unlock(self, name: str) -> None: ...

    async def aclose(self) -> None: ...


TURN_POLL_SECONDS = 0.2


@contextlib.asynccontextmanager
async def taking_turns(coordination: Coordination, name: str) -> AsyncIterator[None]:
    """Work the processes on one database do one at a time (each in turn, none skipped): wait
    for the lock `name`, hold it for the block, then let it go."""
    # The holder is another process: nothing here could be awaited for the lock's release.
    while not await coordination.try_lock(name):  # noqa: ASYNC110
        await asyncio.sleep(TURN_POLL_SECONDS)
    try:
        yield
    finally:
        await coordination.unlock(name)


def open_coordination(database_url: str) -> Coordination:
    parsed = make_url(database_url)
    if parsed.get_backend_name() == "sqlite":
        return FileCoordination(Path(str(parsed.database)))
    return PostgresCoordination(database_url)


class FileCoordination:
    """SQLite's: an exclusive lock on `<database>.lock` for the service; every other lock is
    the service's already (the only process that does once-only work)."""

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".lock")
        self._fd: int | None = None

    async def claim_service(self) -> None:
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise ServiceAlreadyRunning(
                f"another headshot-bot run (pid {holder}) is using {self.path.with_suffix('')}: "
                "one service per SQLite file (use PostgreSQL for several replicas)"
            ) from None
        # The holder's pid, for the message above; the lock itself is what counts (the kernel
        # drops it when the process dies, however it dies).
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    async def try_lock(self, name: str) -> bool:
        return True

    async def unlock(self, name: str) -> None:
        return None

    async def aclose(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


class PostgresCoordination:
    """PostgreSQL's: session-level advisory locks on one connection kept for the purpose."""

    def __init__(self, database_url: str) -> None:
        self._engine: AsyncEngine = create_async_engine(
            database_url, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0
        )
        self._connection: AsyncConnection | None = None
        self._held: set[str] = set()
        self._turn = asyncio.Lock()  # one statement at a time on the one connection

    async def claim_service(self) -> None:
        return None  # any number of replicas

    async def try_lock(self, name: str) -> bool:
        async with self._turn:
            if name in self._held and await self._alive():
                return True
            connection = await self._connect()
            taken = await connection.scalar(select(func.pg_try_advisory_lock(lock_key(name))))
            if taken:
                self._held.add(name)
            return bool(taken)

    async def unlock(self, name: str) -> None:
        async with self._turn:
            if name not in self._held or self._connection is None:
                return
            await self._connection.scalar(select(func.pg_advisory_unlock(lock_key(name))))
            self._held.discard(name)

    async def aclose(self) -> None:
        async with self._turn:
            self._held.clear()
            if self._connection is not None:
                with contextlib.suppress(Exception):
                    await self._connection.close()
                self._connection = None
            await self._engine.dispose()

    async def _alive(self) -> bool:
        """Whether the session that holds our locks is still there (a lost connection took
        them with it)."""
        assert self._connection is not None
        try:
            await self._connection.scalar(select(1))
        except Exception:
            with contextlib.suppress(Exception):
                await self._connection.close()
            self._connection = None
            return False
        return True

    async def _connect(self) -> AsyncConnection:
        if self._connection is None or self._connection.closed:
            # A new session holds none of the old one's locks.
            self._held.clear()
            self._connection = await self._engine.connect()
        return self._connection


def lock_key(name: str) -> int:
    """A lock's name as PostgreSQL's 64-bit advisory lock key."""
    return int.from_bytes(hashlib.sha256(f"headshot-bot:{name}".encode()).digest()[:8], signed=True)
