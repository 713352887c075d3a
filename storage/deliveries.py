"""Results still owed to a chat: where each job's result is to be shown, until it has been.

Where a job's result goes is noted with the job, in the transaction that creates it
(`JobRepository.create`), and cleared once the adapter has shown the result; after a restart
the adapter reads back what it still owes. The target is the adapter's own address (JSON),
opaque here. Deleting or forgetting a job deletes its note.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import leases
from storage.database import Database
from storage.leases import Lease, lease_until
from storage.models import Delivery, utcnow
from storage.records import PendingDelivery

_DELIVERIES = Delivery.__table__


class DeliveryRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def pending(self, platform: str) -> list[PendingDelivery]:
        """What this platform still owes, oldest first."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(_DELIVERIES.c.job_id, _DELIVERIES.c.target)
                .where(_DELIVERIES.c.platform == platform)
                .order_by(_DELIVERIES.c.created_at, _DELIVERIES.c.job_id)
            )
            return [PendingDelivery(row.job_id, row.target) for row in rows]

    async def claim(
        self, platform: str, lease: Lease, *, limit: int = 500
    ) -> list[PendingDelivery]:
        """What this platform owes that no process is showing (nobody holds a live lease on
        it: its process stopped or died), now `lease.owner`'s to show, oldest first. Rows
        another process is claiming at the same moment are skipped (SKIP LOCKED)."""
        async with self._db.write() as conn:
            rows = await leases.claim_free(
                conn,
                _DELIVERIES,
                lease,
                key=_DELIVERIES.c.job_id,
                where=[_DELIVERIES.c.platform == platform],
                order_by=[_DELIVERIES.c.created_at, _DELIVERIES.c.job_id],
                limit=limit,
                returning=[_DELIVERIES.c.job_id, _DELIVERIES.c.target, _DELIVERIES.c.created_at],
            )
            claimed = sorted(rows, key=lambda row: (row.created_at, row.job_id))
            return [PendingDelivery(row.job_id, row.target) for row in claimed]

    async def retarget(self, job_id: str, target: Mapping[str, Any]) -> None:
        """Change where a result still owed goes (no-op once it has been shown)."""
        async with self._db.write() as conn:
            owed = update(_DELIVERIES).where(_DELIVERIES.c.job_id == job_id)
            await conn.execute(owed.values(target=dict(target)))

    async def done(self, job_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(delete(_DELIVERIES).where(_DELIVERIES.c.job_id == job_id))


async def insert_delivery(
    conn: AsyncConnection,
    job_id: str,
    platform: str,
    target: Mapping[str, Any],
    lease: Lease | None = None,
) -> None:
    """Note a delivery inside the caller's transaction (the job's own, when it is created),
    shown by the lease's owner (the process that took the command)."""
    values: dict[str, Any] = {
        "job_id": job_id,
        "platform": platform,
        "target": dict(target),
        "created_at": utcnow(),
    }
    if lease is not None:
        values |= {"lease_owner": lease.owner, "lease_expires_at": lease_until(conn, lease.seconds)}
    await conn.execute(insert(_DELIVERIES).values(values))


async def renew_deliveries(conn: AsyncConnection, lease: Lease) -> None:
    """Extend the leases of the deliveries `lease.owner` is showing (the caller's transaction)."""
    await leases.renew(conn, _DELIVERIES, lease)


async def release_deliveries(conn: AsyncConnection, owner: str) -> None:
    await leases.release(conn, _DELIVERIES, owner)
