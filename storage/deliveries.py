"""Results still owed to a chat: where each job's result is to be shown, until it has been.

Where a job's result goes is noted with the job, in the transaction that creates it
(`JobRepository.create`), and cleared once the adapter has shown the result; after a restart
the adapter reads back what it still owes. The target is the adapter's own address (JSON),
opaque here. Deleting or forgetting a job deletes its note.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import leases
from storage.audit import write_audit
from storage.database import Database
from storage.leases import Lease, lease_until
from storage.models import Delivery, utcnow
from storage.records import AuditNote, PendingDelivery

_DELIVERIES = Delivery.__table__


class DeliveryRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def pending(self, platform: str) -> list[PendingDelivery]:
        """What this platform still owes, oldest first."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(_DELIVERIES.c.job_id, _DELIVERIES.c.target, _DELIVERIES.c.language)
                .where(_DELIVERIES.c.platform == platform)
                .order_by(_DELIVERIES.c.created_at, _DELIVERIES.c.job_id)
            )
            return [PendingDelivery(row.job_id, row.target, row.language) for row in rows]

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
                returning=[
                    _DELIVERIES.c.job_id,
                    _DELIVERIES.c.target,
                    _DELIVERIES.c.language,
                    _DELIVERIES.c.created_at,
                ],
            )
            claimed = sorted(rows, key=lambda row: (row.created_at, row.job_id))
            return [PendingDelivery(row.job_id, row.target, row.language) for row in claimed]

    async def retarget(self, job_id: str, target: Mapping[str, Any]) -> None:
        """Change where a result still owed goes (no-op once it has been shown)."""
        async with self._db.write() as conn:
            owed = update(_DELIVERIES).where(_DELIVERIES.c.job_id == job_id)
            await conn.execute(owed.values(target=dict(target)))

    async def take_to_show(self, job_id: str, lease: Lease) -> bool:
        """Make sure `lease.owner` is the one process to show this result, just before it does:
        True while it holds the delivery's lease (or nobody holds a live one, then now it
        does). False when another process holds it (it took the result over while this one
        stalled) or the result has been shown already: then this one must not show it.

        Taking over a result that another process had taken to show, and never recorded as
        shown, may show it twice (that one may have posted it before it died): each such case
        is written to the audit log (`delivery_repeated`), so that it is counted."""
        expires = _DELIVERIES.c.lease_expires_at

        async def write(conn: AsyncConnection) -> bool:
            row = (
                await conn.execute(
                    select(_DELIVERIES.c.show_owner)
                    .where(
                        _DELIVERIES.c.job_id == job_id,
                        or_(
                            _DELIVERIES.c.lease_owner == lease.owner,
                            expires.is_(None),
                            expires < leases.database_now(conn),
                        ),
                    )
                    .with_for_update()
                )
            ).one_or_none()
            if row is None:
                return False
            await conn.execute(
                update(_DELIVERIES)
                .where(_DELIVERIES.c.job_id == job_id)
                .values(
                    lease_owner=lease.owner,
                    lease_expires_at=lease_until(conn, lease.seconds),
                    show_owner=lease.owner,
                )
            )
            if row.show_owner is not None and row.show_owner != lease.owner:
                note = AuditNote(lease.owner, "delivery_repeated", target=job_id)
                await write_audit(conn, note)
            return True

        return await self._db.run_write(write)

    async def done(self, job_id: str, *, shown_by: str | None = None) -> bool:
        """The result has been shown: no longer owed. False if it was no longer owed already:
        another process showed it as well (it took the result over while this one stalled past
        its lease, between taking it to show and recording it). Such a duplicate is written to
        the audit log (`duplicate_delivery`), so that it is counted."""

        async def write(conn: AsyncConnection) -> bool:
            gone = await conn.execute(
                delete(_DELIVERIES)
                .where(_DELIVERIES.c.job_id == job_id)
                .returning(_DELIVERIES.c.job_id)
            )
            if gone.one_or_none() is not None:
                return True
            if shown_by is not None:
                note = AuditNote(shown_by, "duplicate_delivery", target=job_id)
                await write_audit(conn, note)
            return False

        return await self._db.run_write(write)


async def insert_delivery(
    conn: AsyncConnection,
    job_id: str,
    platform: str,
    target: Mapping[str, Any],
    language: str | None = None,
    lease: Lease | None = None,
) -> None:
    """Note a delivery inside the caller's transaction (the job's own, when it is created),
    shown by the lease's owner (the process that took the command), in `language`."""
    values: dict[str, Any] = {
        "job_id": job_id,
        "platform": platform,
        "target": dict(target),
        "language": language,
        "created_at": utcnow(),
    }
    if lease is not None:
        values |= {"lease_owner": lease.owner, "lease_expires_at": lease_until(conn, lease.seconds)}
    await conn.execute(insert(_DELIVERIES).values(values))


async def renew_deliveries(conn: AsyncConnection, lease: Lease) -> None:
    """Extend the leases of the deliveries `lease.owner` is showing (the caller's transaction)."""
    await leases.renew(conn, _DELIVERIES, lease, key=_DELIVERIES.c.job_id)


async def release_deliveries(conn: AsyncConnection, owner: str) -> None:
    await leases.release(conn, _DELIVERIES, owner)
