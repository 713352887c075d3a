"""Leases: which process drives a job (or shows its result), and until when.

A leased table has `lease_owner` and `lease_expires_at` columns; the three operations below
serve every such table alike.

Expiry is judged by the database's clock, never a replica's: on PostgreSQL that is `now()`
on the server. SQLite is a file on the one machine that runs the bot, whose clock it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, Table, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import utcnow


@dataclass(frozen=True)
class Lease:
    """A process's claim on what it drives: who, and for how long from each renewal."""

    owner: str
    seconds: float


def database_now(conn: AsyncConnection) -> Any:
    """The database's time, as a value to compare or store in the connection's dialect."""
    return func.now() if conn.dialect.name == "postgresql" else utcnow()


def lease_until(conn: AsyncConnection, seconds: float) -> Any:
    return database_now(conn) + timedelta(seconds=seconds)


async def claim_free(
    conn: AsyncConnection,
    table: Table,
    lease: Lease,
    *,
    key: Any,
    where: list[ColumnElement[bool]],
    order_by: list[Any],
    limit: int,
    returning: list[Any],
) -> CursorResult[Any]:
    """Rows matching `where` that nobody holds a live lease on (never leased, or its process
    stopped renewing), up to `limit` of them first by `order_by`: now `lease.owner`'s. Rows
    another process is claiming at the same moment are skipped, not waited for (FOR UPDATE
    SKIP LOCKED; SQLite serialises writers anyway). The rows come back in no set order."""
    expires = table.c.lease_expires_at
    free = (
        select(key)
        .where(*where, or_(expires.is_(None), expires < database_now(conn)))
        .order_by(*order_by)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return await conn.execute(
        update(table)
        .where(key.in_(free.scalar_subquery()))
        .values(lease_owner=lease.owner, lease_expires_at=lease_until(conn, lease.seconds))
        .returning(*returning)
    )


async def renew(
    conn: AsyncConnection, table: Table, lease: Lease, *where: ColumnElement[bool], key: Any
) -> None:
    """Extend the leases `lease.owner` holds on the rows matching `where`. A row another
    transaction has locked right now (a dispatch pass giving it a slot) is skipped, not waited
    for: it is renewed next time, well before it runs out, and renewing never waits on a lock
    (so it can never be one side of a deadlock)."""
    mine = (
        select(key)
        .where(table.c.lease_owner == lease.owner, *where)
        .with_for_update(skip_locked=True)
    )
    await conn.execute(
        update(table)
        .where(key.in_(mine.scalar_subquery()))
        .values(lease_expires_at=lease_until(conn, lease.seconds))
    )


async def release(
    conn: AsyncConnection, table: Table, owner: str, *where: ColumnElement[bool]
) -> None:
    """Let go of the leases `owner` holds on the rows matching `where`: expired as of now."""
    await conn.execute(
        update(table)
        .where(table.c.lease_owner == owner, *where)
        .values(lease_expires_at=database_now(conn))
    )
