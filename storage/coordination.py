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
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Protocol

from sqlalchemy import column, func, select, table
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

log = logging.getLogger(__name__)

# How long to wait before making a lost LISTEN connection again.
RELISTEN_SECONDS = 1.0
# The listener's application_name, as pg_stat_activity shows it.
LISTENER_NAME = "headshot-bot listener"
_ACTIVITY = table("pg_stat_activity", column("application_name"), column("datname"))


class ServiceAlreadyRunning(Exception):
    """Another process runs as the service on this SQLite database. The message says which."""


class Coordination(Protocol):
    # Whether other processes may be listening on the channels (several replicas).
    reaches_others: bool

    async def claim_service(self) -> None:
        """Start running as the service (`headshot-bot run`). Raises ServiceAlreadyRunning
        where only one may (SQLite)."""
        ...

    async def try_lock(self, name: str) -> bool:
        """Whether this process holds the lock `name` now (taking it if it is free). Held until
        `unlock` or `aclose`; asking again while holding it is True."""
        ...

    async def unlock(self, name: str) -> None: ...

    def listen(self, channel: str, callback: Callable[[str], object]) -> None:
        """Have `callback(payload)` called for every message published on `channel` by any
        process on the database, this one included, from now on. Best effort: a message
        published while a connection is being re-made can be lost (keep a fallback)."""
        ...

    async def publish(self, channel: str, payload: str) -> None:
        """Send `payload` (text, under 8000 bytes) to every listener of `channel`."""
        ...

    async def live_replicas(self) -> int:
        """How many processes run on the database now, this one included (at least 1): what
        a chat platform's global limits are shared among."""
        ...

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

    reaches_others = False

    def __init__(self, database: Path) -> None:
        self.path = database.with_name(database.name + ".lock")
        self._fd: int | None = None
        self._listeners = _Listeners()

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

    def listen(self, channel: str, callback: Callable[[str], object]) -> None:
        self._listeners.add(channel, callback)

    async def publish(self, channel: str, payload: str) -> None:
        self._listeners.deliver(channel, payload)

    async def live_replicas(self) -> int:
        return 1  # one service per SQLite file

    async def aclose(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


class PostgresCoordination:
    """PostgreSQL's: session-level advisory locks on one connection kept for the purpose, and
    LISTEN/NOTIFY on another."""

    reaches_others = True

    def __init__(self, database_url: str) -> None:
        self._engine: AsyncEngine = create_async_engine(
            database_url, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=0
        )
        self._connection: AsyncConnection | None = None
        self._held: set[str] = set()
        self._turn = asyncio.Lock()  # one statement at a time on the one connection
        self._publisher: AsyncEngine = create_async_engine(
            database_url, isolation_level="AUTOCOMMIT", pool_size=2, max_overflow=4
        )
        self._conninfo = (
            make_url(database_url)
            .set(drivername="postgresql")
            .render_as_string(hide_password=False)
        )
        self._listeners = _Listeners()
        self._listening: asyncio.Task[None] | None = None
        self._listener_connected = asyncio.Event()

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

    def listen(self, channel: str, callback: Callable[[str], object]) -> None:
        self._listeners.add(channel, callback)
        if self._listening is None:
            self._listening = asyncio.create_task(self._listen(), name="listen-notify")
        else:
            # A channel added later is listened to from the next connection on.
            self._restart_listener()

    async def publish(self, channel: str, payload: str) -> None:
        async with self._publisher.connect() as connection:
            await connection.execute(select(func.pg_notify(channel, payload)))

    async def live_replicas(self) -> int:
        # Every process on the database listens (events, wake-ups) on one connection named
        # so, and a process that dies loses it: counting them counts the live processes,
        # `headshot-bot generate` beside the service included (a smaller share, never a
        # larger one). This one counts even while its listener is being made again.
        async with self._publisher.connect() as connection:
            count = await connection.scalar(
                select(func.count())
                .select_from(_ACTIVITY)
                .where(
                    _ACTIVITY.c.application_name == LISTENER_NAME,
                    _ACTIVITY.c.datname == func.current_database(),
                )
            )
        return max(1, int(count or 0))

    async def listening(self) -> None:
        """Until the listener's connection is up (tests wait for it before publishing)."""
        await self._listener_connected.wait()

    def _restart_listener(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
        self._listening = asyncio.create_task(self._listen(), name="listen-notify")

    async def _listen(self) -> None:
        """LISTEN on a connection of its own, made again whenever it is lost."""
        import psycopg  # the [postgres] extra's driver, as SQLAlchemy's engine uses it
        from psycopg import sql

        while True:
            self._listener_connected.clear()
            try:
                connection = await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, application_name=LISTENER_NAME
                )
                async with connection:
                    for channel in self._listeners.channels():
                        await connection.execute(
                            sql.SQL("LISTEN {}").format(sql.Identifier(channel))
                        )
                    self._listener_connected.set()
                    async for note in connection.notifies():
                        self._listeners.deliver(note.channel, note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); making it again", exc)
            await asyncio.sleep(RELISTEN_SECONDS)

    async def aclose(self) -> None:
        if self._listening is not None:
            self._listening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listening
            self._listening = None
        await self._publisher.dispose()
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


class _Listeners:
    """Callbacks by channel; one that raises is logged, never stops the others."""

    def __init__(self) -> None:
        self._by_channel: dict[str, list[Callable[[str], object]]] = {}

    def add(self, channel: str, callback: Callable[[str], object]) -> None:
        self._by_channel.setdefault(channel, []).append(callback)

    def channels(self) -> list[str]:
        return list(self._by_channel)

    def deliver(self, channel: str, payload: str) -> None:
        for callback in self._by_channel.get(channel, ()):
            try:
                callback(payload)
            except Exception:
                log.exception("a listener of %s failed", channel)


def lock_key(name: str) -> int:
    """A lock's name as PostgreSQL's 64-bit advisory lock key."""
    return int.from_bytes(hashlib.sha256(f"headshot-bot:{name}".encode()).digest()[:8], signed=True)
