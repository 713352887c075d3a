"""Alembic environment: runs migrations over the async engine the application uses."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url

from storage.database import Database
from storage.models import Base

config = context.config
target_metadata = Base.metadata
# The advisory lock that serialises migrations on PostgreSQL (any fixed 64-bit number).
MIGRATION_LOCK = 0x6865_6164_7368_6F74  # "headshot"


def _database_url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("DATABASE_URL is not set")
    return str(url)


def include_name(name: str | None, type_: str, _parent_names: object) -> bool:
    """What autogenerate compares: Procrastinate's tables are its own (revision 0010 reads
    them from its package), never in our models."""
    return not (type_ == "table" and (name or "").startswith("procrastinate_"))


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=sqlite,
        include_name=include_name,
    )
    if not sqlite:
        with context.begin_transaction():
            # Replicas starting together migrate one at a time: the others wait here, then
            # find the schema up to date. The lock goes with the transaction.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
            context.run_migrations()
        return
    # A batch migration on SQLite copies a table, drops the old one and renames the copy. With
    # foreign keys enforced, that DROP first deletes every row and so cascades: dropping `jobs`
    # would empty the ledger and the outputs. The pragma is ignored inside a transaction, so it
    # is set before ours begins; the keys are checked instead before the migration commits.
    _sqlite_pragma(connection, "foreign_keys=OFF")
    try:
        with context.begin_transaction():
            context.run_migrations()
            broken = connection.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
            if broken:
                raise RuntimeError(f"migration left foreign keys dangling: {broken[:5]}")
    finally:
        _sqlite_pragma(connection, "foreign_keys=ON")


def _sqlite_pragma(connection: Connection, pragma: str) -> None:
    """Run a PRAGMA outside any transaction, on the driver's connection."""
    cursor = connection.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(f"PRAGMA {pragma}")
    finally:
        cursor.close()


async def _run_async() -> None:
    db = Database(_database_url())
    # On SQLite the migration's transaction takes the write lock from its first statement,
    # reading the schema's version included.
    engine = db.engine.execution_options(sqlite_begin="IMMEDIATE")
    try:
        with _one_at_a_time_on_sqlite(db):
            async with engine.connect() as connection:
                await connection.run_sync(_run)
                await connection.commit()
    finally:
        await db.dispose()


@contextlib.contextmanager
def _one_at_a_time_on_sqlite(db: Database) -> Iterator[None]:
    """Two processes migrating one SQLite file at once take turns on a lock file beside it.
    The write lock alone did not do it: under load a second process now and then ran a
    migration the first had just applied ("duplicate column"). Alembic runs in a thread of its
    own, so waiting here blocks no event loop."""
    if not db.is_sqlite:
        yield
        return
    path = Path(str(make_url(db.url).database) + ".migrate.lock")
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


if context.is_offline_mode():
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
