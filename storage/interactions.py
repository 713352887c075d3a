"""Deferred interactions: commands a chat platform shows as "thinking…" until we answer them.

Such a platform never sends the interaction again, so one whose process died would stay
"thinking…" for good. Each is noted here when it is deferred, with its token sealed
(`storage.sealing`) and only until the token expires, and deleted once it has been answered.
The process answering holds its lease (`storage.leases`); when that process dies, another
claims the interaction once the lease has run out and ends it.

Rows name the person who asked: `forget` deletes a person's rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import leases
from storage.database import Database
from storage.leases import Lease, database_now, lease_until
from storage.models import DeferredInteraction, Job, utcnow

_DEFERRED = DeferredInteraction.__table__
_JOBS = Job.__table__


@dataclass(frozen=True)
class NewDeferral:
    # "<platform>:<interaction id>", the request key of a job it makes.
    key: str
    platform: str
    person: str
    application_id: str
    message_id: str | None
    sealed_token: str
    expires_at: datetime


@dataclass(frozen=True)
class AbandonedDeferral:
    key: str
    application_id: str
    message_id: str | None
    sealed_token: str
    # The job the interaction made before its process died, if it got that far.
    job_id: str | None


class InteractionRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(self, deferral: NewDeferral, lease: Lease) -> None:
        """Note a deferred interaction, being answered by `lease.owner`."""

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(
                insert(_DEFERRED).values(
                    key=deferral.key,
                    platform=deferral.platform,
                    person=deferral.person,
                    application_id=deferral.application_id,
                    message_id=deferral.message_id,
                    sealed_token=deferral.sealed_token,
                    expires_at=deferral.expires_at,
                    created_at=utcnow(),
                    lease_owner=lease.owner,
                    lease_expires_at=lease_until(conn, lease.seconds),
                )
            )

        await self._db.run_write(write)

    async def answered(self, key: str) -> None:
        """Answered (or ended by another process): it goes, with its token."""

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(delete(_DEFERRED).where(_DEFERRED.c.key == key))

        await self._db.run_write(write)

    async def claim_abandoned(
        self, platform: str, lease: Lease, *, limit: int = 100
    ) -> list[AbandonedDeferral]:
        """Interactions of this platform whose process stopped or died before answering, now
        `lease.owner`'s to end, each with the job it made if any. Those whose token has
        expired can no longer be answered at all: they go."""
        async with self._db.write() as conn:
            now = database_now(conn)
            await conn.execute(
                delete(_DEFERRED).where(
                    _DEFERRED.c.platform == platform, _DEFERRED.c.expires_at <= now
                )
            )
            rows = await leases.claim_free(
                conn,
                _DEFERRED,
                lease,
                key=_DEFERRED.c.key,
                where=[_DEFERRED.c.platform == platform],
                order_by=[_DEFERRED.c.created_at, _DEFERRED.c.key],
                limit=limit,
                returning=[
                    _DEFERRED.c.key,
                    _DEFERRED.c.application_id,
                    _DEFERRED.c.message_id,
                    _DEFERRED.c.sealed_token,
                ],
            )
            claimed = list(rows)
            jobs = await _jobs_of(conn, [row.key for row in claimed])
            return [
                AbandonedDeferral(
                    key=row.key,
                    application_id=row.application_id,
                    message_id=row.message_id,
                    sealed_token=row.sealed_token,
                    job_id=jobs.get(row.key),
                )
                for row in sorted(claimed, key=lambda row: row.key)
            ]

    async def let_go(self, key: str, owner: str) -> None:
        """Give up ending one for now: the next claim takes it again."""
        async with self._db.write() as conn:
            await leases.release(conn, _DEFERRED, owner, _DEFERRED.c.key == key)

    async def renew(self, lease: Lease) -> None:
        """Extend the leases of the interactions `lease.owner` is answering."""
        async with self._db.write() as conn:
            await leases.renew(conn, _DEFERRED, lease, key=_DEFERRED.c.key)

    async def release(self, owner: str) -> None:
        """Let go of what `owner` was answering (a clean stop): another ends it at once."""
        async with self._db.write() as conn:
            await leases.release(conn, _DEFERRED, owner)


async def _jobs_of(conn: AsyncConnection, keys: list[str]) -> dict[str, str]:
    if not keys:
        return {}
    rows = await conn.execute(
        select(_JOBS.c.request_key, _JOBS.c.id).where(_JOBS.c.request_key.in_(keys))
    )
    return {row.request_key: row.id for row in rows}


async def forget_interactions(conn: AsyncConnection, platform: str, person: str) -> None:
    """Every deferred interaction of this person (in the caller's transaction: `forget`'s)."""
    await conn.execute(
        delete(_DEFERRED).where(_DEFERRED.c.platform == platform, _DEFERRED.c.person == person)
    )
