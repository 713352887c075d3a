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

from storage.database import Database
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

    async def retarget(self, job_id: str, target: Mapping[str, Any]) -> None:
        """Change where a result still owed goes (no-op once it has been shown)."""
        async with self._db.write() as conn:
            owed = update(_DELIVERIES).where(_DELIVERIES.c.job_id == job_id)
            await conn.execute(owed.values(target=dict(target)))

    async def done(self, job_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(delete(_DELIVERIES).where(_DELIVERIES.c.job_id == job_id))


async def insert_delivery(
    conn: AsyncConnection, job_id: str, platform: str, target: Mapping[str, Any]
) -> None:
    """Note a delivery inside the caller's transaction (the job's own, when it is created)."""
    await conn.execute(
        insert(_DELIVERIES).values(
            job_id=job_id, platform=platform, target=dict(target), created_at=utcnow()
        )
    )
