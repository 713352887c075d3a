"""Whether the database can be written right now, asked on a connection of its own.

A pooled connection would not tell: one that SQLite opened before its file became read-only
still writes, and a PostgreSQL session keeps the `default_transaction_read_only` it started
with. So each probe opens a new connection, starts a write transaction and makes a write that
changes nothing (an UPDATE matching no row, which both databases refuse when read-only), then
rolls it back.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from storage.database import Database

PROBE_SECONDS = 5.0


class WriteProbe:
    def __init__(self, db: Database) -> None:
        connect_args = {"timeout": PROBE_SECONDS} if db.is_sqlite else {}
        self._engine: AsyncEngine = create_async_engine(
            db.url, poolclass=NullPool, connect_args=connect_args
        )
        self._is_sqlite = db.is_sqlite

    async def check(self) -> None:
        """Raise if a write transaction cannot be made."""
        async with self._engine.connect() as conn:
            if self._is_sqlite:
                # A plain BEGIN defers the write lock to the UPDATE; IMMEDIATE takes it at once,
                # as every write of the service does, and fails the same way they would.
                await conn.exec_driver_sql("BEGIN IMMEDIATE")
            else:
                await conn.begin()
            try:
                await conn.execute(text("UPDATE jobs SET state = state WHERE 1 = 0"))
            finally:
                await conn.rollback()

    async def aclose(self) -> None:
        await self._engine.dispose()


__all__ = ["WriteProbe"]
