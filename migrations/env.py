"""Alembic environment: runs migrations over the async engine the application uses."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from storage.database import Database
from storage.models import Base

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("DATABASE_URL")
    if not url:
        raise RuntimeError("DATABASE_URL is not set")
    return str(url)


def _run(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection, target_metadata=target_metadata, render_as_batch=sqlite
    )
    if not sqlite:
        with context.begin_transaction():
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
    try:
        async with db.engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await db.dispose()


if context.is_offline_mode():
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_run_async())
