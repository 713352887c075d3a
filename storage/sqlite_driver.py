"""SQLite under SQLAlchemy's asyncio engine with one thread hop per statement.

SQLite's calls block, so they run in a thread that owns the connection, never in the event loop.
The stock driver, aiosqlite, hops to that thread and back for each step of a statement (make a
cursor, execute, fetch, close) and for the rollback with which the pool resets every connection
it takes back. Each hop wakes the thread and then the loop, and on the hot path the hops cost
more CPU than SQLite itself (each wakes a thread that then waits for the GIL). Here:
- a statement is one hop: its cursor is made, run, read and closed in the thread;
- BEGIN, SAVEPOINT and RELEASE go with the statement after them, in its hop;
- a commit or rollback with no transaction open makes none;
- a COMMIT that fails is rolled back in the same hop, so the connection comes back clean;
- `run_each` runs whole coroutines of statements in the thread: one hop for all of them, and
  for their COMMIT too when asked.

Selected by `Database` for every `sqlite+aiosqlite://` URL (the name stays for operators'
settings); the engine is SQLAlchemy's own SQLite dialect, so SQL, types and pooling are unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.engine import AdaptedConnection
from sqlalchemy.util.concurrency import await_

DRIVER_NAME = "headshot_sqlite"

T = TypeVar("T")
_Row = tuple[Any, ...]
_Outcome = tuple[Any, list[_Row], int, int | None, bool]
# A coroutine's end: (its value, None) or (None, its error).
Outcome = tuple[Any, BaseException | None]


class _Thread:
    """The one thread that touches a connection: calls run there in the order they were sent."""

    def __init__(self) -> None:
        self._calls: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="sqlite", daemon=True)
        self._thread.start()

    def call(self, function: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._calls.put((loop, future, function, args))
        return future

    def stop(self) -> None:
        self._calls.put(None)

    def is_current(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            loop, future, function, args = call
            try:
                outcome = (function(*args), None)
            except BaseException as exc:  # handed to the awaiting task, whatever it is
                outcome = (None, exc)
            # RuntimeError: the loop has closed, and nobody is waiting any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle, future, *outcome)


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the awaiting task was cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def _at_once(function: Callable[..., T], *args: Any) -> T:
    return function(*args)


def _drive(body: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `body()` to its end here and now: each statement it awaits is answered at once, in
    this thread, so it never waits on the event loop."""
    coroutine = body()
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise RuntimeError("a body run in SQLite's thread awaited something other than a statement")


def _run(
    connection: sqlite3.Connection, sql: str, parameters: Any, many: bool, prelude: list[str]
) -> _Outcome:
    cursor = connection.cursor()
    try:
        for step in prelude:
            cursor.execute(step)
        if many:
            cursor.executemany(sql, parameters)
        elif parameters is None:
            cursor.execute(sql)
        else:
            cursor.execute(sql, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else []
        return description, rows, cursor.rowcount, cursor.lastrowid, connection.in_transaction
    finally:
        cursor.close()


class Cursor:
    """A DB-API cursor whose statement ran, whole, in one hop; its rows are already here."""

    arraysize = 1

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None
        self._rows: list[_Row] = []
        self._next = 0

    def execute(self, sql: str, parameters: Any = None) -> Cursor:
        if not parameters and self._connection._defer(sql):
            self._take((None, [], -1, None, True))
            return self
        self._take(self._connection._statement(sql, parameters, False))
        return self

    def executemany(self, sql: str, parameters: Sequence[Any]) -> Cursor:
        self._take(self._connection._statement(sql, parameters, True))
        return self

    def _take(self, outcome: _Outcome) -> None:
        self.description, self._rows, self.rowcount, self.lastrowid, open_ = outcome
        self._next = 0
        self._connection._in_transaction = open_

    def fetchone(self) -> _Row | None:
        if self._next >= len(self._rows):
            return None
        self._next += 1
        return self._rows[self._next - 1]

    def fetchmany(self, size: int | None = None) -> list[_Row]:
        end = self._next + (size or self.arraysize)
        taken = self._rows[self._next : end]
        self._next += len(taken)
        return taken

    def fetchall(self) -> list[_Row]:
        taken = self._rows[self._next :]
        self._next = len(self._rows)
        return taken

    def __iter__(self) -> Iterator[_Row]:
        while (row := self.fetchone()) is not None:
            yield row

    def close(self) -> None:
        self._rows = []

    async def _async_soft_close(self) -> None:
        """SQLAlchemy's asyncio results call this; the real cursor closed in its hop."""

    def setinputsizes(self, *sizes: Any) -> None:
        pass

    def setoutputsize(self, *args: Any) -> None:
        pass


class Connection(AdaptedConnection):
    """The sqlite3 connection behind a thread, as the synchronous DB-API SQLAlchemy drives."""

    def __init__(self, thread: _Thread, connection: sqlite3.Connection) -> None:
        self._thread = thread
        self._connection = connection
        self._in_transaction = connection.in_transaction
        # BEGIN, SAVEPOINT and RELEASE not sent yet: they go with the next statement, in its
        # hop, and a commit or rollback that comes first makes them moot.
        self._prelude: list[str] = []

    def _hop(self, function: Callable[..., Any], *args: Any) -> Any:
        if self._thread.is_current():
            # Inside `run_each`: already there. Awaited all the same (it never suspends),
            # as SQLAlchemy's asyncio connection checks that a statement was.
            return await_(_at_once(function, self._connection, *args))
        return await_(self._thread.call(function, self._connection, *args))

    def run_each(
        self,
        steps: Sequence[tuple[str, Callable[[], Coroutine[Any, Any, Any]]]],
        *,
        commit: bool = False,
    ) -> asyncio.Future[tuple[list[Outcome], BaseException | None]]:
        """Run each step's coroutine whole, one after the other, in this connection's thread,
        in a savepoint of its own (named by the step): each statement a coroutine sends runs at
        once, so all of them take one hop instead of one each. A coroutine must await nothing
        but statements on this connection (through SQLAlchemy's asyncio connection); the loop
        goes on meanwhile, and must not use the connection until this is done.

        Each step's outcome is (its value, None), or (None, its error) with its writes rolled
        back to its savepoint and the others kept. If that rollback fails too, the transaction
        cannot be trusted: it is the second value returned, and no later step runs.

        With `commit`, the transaction is then committed in the same hop; a COMMIT that fails
        is the second value returned, the transaction rolled back. The caller's own commit then
        has nothing left to send."""
        return self._thread.call(self._run_each, steps, commit)

    def _run_each(
        self,
        steps: Sequence[tuple[str, Callable[[], Coroutine[Any, Any, Any]]]],
        commit: bool,
    ) -> tuple[list[Outcome], BaseException | None]:
        outcomes: list[Outcome] = []
        broken: BaseException | None = None
        for savepoint, body in steps:
            if broken is not None:
                outcomes.append((None, broken))
                continue
            self.savepoint(savepoint)
            try:
                outcomes.append((_drive(body), None))
            except Exception as exc:
                outcomes.append((None, exc))
                prelude, self._prelude = self._prelude, []
                try:
                    _run(
                        self._connection, f"ROLLBACK TO SAVEPOINT {savepoint}", None, False, prelude
                    )
                except Exception as failed:
                    broken = failed
                self._in_transaction = self._connection.in_transaction
        if commit and broken is None:
            try:
                self._commit_by(lambda commit: commit(self._connection))
            except Exception as failed:
                broken = failed
        return outcomes, broken

    def _defer(self, sql: str) -> bool:
        """Keep a transaction's BEGIN, or a savepoint's start or release, for the next
        statement. Nothing in between reads or writes, so running them just before it changes
        nothing but the hop: SQLite takes no lock until the first statement after BEGIN
        (DEFERRED), or takes the write lock at once (IMMEDIATE) just as it would have."""
        word = sql.lstrip()[:9].upper()
        if word.startswith("BEGIN") and not self._in_transaction:
            self._in_transaction = True
        elif not (word.startswith(("SAVEPOINT", "RELEASE")) and self._in_transaction):
            return False
        self._prelude.append(sql)
        return True

    def savepoint(self, name: str) -> None:
        """Start a savepoint inside the open transaction, sent with the next statement. Left to
        the COMMIT to release; `ROLLBACK TO SAVEPOINT <name>` undoes what followed it."""
        if not self._defer(f"SAVEPOINT {name}"):
            raise RuntimeError("a savepoint needs an open transaction")

    def _statement(self, sql: str, parameters: Any, many: bool) -> _Outcome:
        prelude, self._prelude = self._prelude, []
        try:
            outcome: _Outcome = self._hop(_run, sql, parameters, many, prelude)
        except BaseException:
            # What the prelude began, SQLite says: its word for the rollback to come.
            self._in_transaction = self._connection.in_transaction
            raise
        return outcome

    def cursor(self, server_side: bool = False) -> Cursor:
        return Cursor(self)

    def execute(self, sql: str, parameters: Any = None) -> Cursor:
        return self.cursor().execute(sql, parameters)

    def commit(self) -> None:
        self._commit_by(self._hop)

    def _commit_by(self, run: Callable[[Callable[[sqlite3.Connection], bool]], bool]) -> None:
        """COMMIT the open transaction, `run` in a hop or, from the connection's own thread
        (`run_each`), at once. Whatever happens, the transaction flag follows SQLite's."""
        if self._unsent() or not self._in_transaction:
            return
        try:
            self._in_transaction = run(_commit)
        except BaseException:
            self._in_transaction = self._connection.in_transaction
            raise

    def rollback(self) -> None:
        if self._unsent():
            return
        if self._in_transaction:
            self._in_transaction = self._hop(_rollback)

    def _unsent(self) -> bool:
        """Drops the prelude (a COMMIT releases every savepoint, a ROLLBACK undoes them). True
        if the transaction's BEGIN was in it: nothing was sent, and there is nothing to end."""
        prelude, self._prelude = self._prelude, []
        if not any(step.lstrip()[:5].upper() == "BEGIN" for step in prelude):
            return False
        self._in_transaction = False
        return True

    def close(self) -> None:
        try:
            self._hop(sqlite3.Connection.close)
        finally:
            self._thread.stop()

    def terminate(self) -> None:
        self.close()

    @property
    def isolation_level(self) -> str | None:
        return self._connection.isolation_level

    @isolation_level.setter
    def isolation_level(self, value: str | None) -> None:
        self._hop(_set_isolation_level, value)

    def create_function(self, *args: Any, **kwargs: Any) -> None:
        self._hop(lambda connection: connection.create_function(*args, **kwargs))


def _commit(connection: sqlite3.Connection) -> bool:
    try:
        connection.commit()
    except sqlite3.Error:
        # A COMMIT that failed (a deferred constraint, a full disk) leaves the transaction open;
        # the caller hears that nothing was kept, so nothing is: the connection comes back clean.
        connection.rollback()
        raise
    return connection.in_transaction


def _rollback(connection: sqlite3.Connection) -> bool:
    connection.rollback()
    return connection.in_transaction


def _set_isolation_level(connection: sqlite3.Connection, value: str | None) -> None:
    connection.isolation_level = value


class _DBAPI:
    """The module-like object SQLAlchemy's dialect reads: sqlite3's names, our `connect`."""

    paramstyle = "qmark"
    has_stop = True  # read by the aiosqlite dialect this one extends

    def __init__(self) -> None:
        for name in (
            *("Error", "DatabaseError", "IntegrityError", "NotSupportedError"),
            *("OperationalError", "ProgrammingError", "InterfaceError", "InternalError"),
            *("DataError", "Warning", "sqlite_version", "sqlite_version_info"),
            *("PARSE_COLNAMES", "PARSE_DECLTYPES", "Binary"),
        ):
            setattr(self, name, getattr(sqlite3, name))

    def connect(self, *args: Any, **kwargs: Any) -> Connection:
        thread = _Thread()
        # The loop reads nothing from the connection while a call is in its thread.
        kwargs["check_same_thread"] = False
        try:
            connection = await_(thread.call(lambda: sqlite3.connect(*args, **kwargs)))
        except BaseException:
            thread.stop()
            raise
        return Connection(thread, connection)


class SQLiteThreadDialect(SQLiteDialect_aiosqlite):
    driver = DRIVER_NAME
    supports_statement_cache = True
    supports_server_side_cursors = False
    has_terminate = True

    @classmethod
    def import_dbapi(cls) -> Any:
        return _DBAPI()

    def retrieve_dbapi_version(self, dbapi: Any) -> Any:
        return tuple(sqlite3.sqlite_version_info)

    def get_driver_connection(self, connection: Any) -> Any:
        return connection._connection

    def do_terminate(self, dbapi_connection: Any) -> None:
        dbapi_connection.terminate()


def register() -> None:
    """Make `sqlite+headshot_sqlite://` URLs name this dialect (idempotent)."""
    from sqlalchemy.dialects import registry

    registry.register(f"sqlite.{DRIVER_NAME}", __name__, "SQLiteThreadDialect")
