"""The inbox: updates a chat platform handed over and was told we have, until they are handled.

A platform that got its acknowledgement never sends an update again, so an update is noted here
before it is acknowledged and deleted once it has been handled. The process handling it holds
its lease (`storage.leases`); if that process dies, another takes the update over once the lease
has run out and handles it again. An update that keeps killing its handlers is dropped after
`MAX_ATTEMPTS`, with the waits it took; its sender is to be told, unless a job was queued under
its key (`InboxItem.job_queued`), which then answers them.

Keyed by platform, bot and update id: the same update delivered again while it is here changes
nothing. Rows hold what people wrote (names and text): `forget` deletes a person's rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import leases
from storage.database import Database
from storage.dml import insert_ignoring_duplicates
from storage.leases import Lease, lease_until
from storage.models import InboxUpdate, Job, utcnow
from storage.waits import drop_taken

_INBOX = InboxUpdate.__table__
_JOBS = Job.__table__
# Handled this many times without an end (each handler died): the update is dropped. A process
# dies with every update in its hands, hundreds in a burst, so one death says little about any
# one of them. In the chaos run of 500 jobs and 20 kills (bench/chaos.py) a limit of 3 dropped
# 157 innocent updates, and with the limit raised, updates were handled up to 8 times before
# they ended. Twenty still bounds what an update that does kill every handler costs.
MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class InboxItem:
    key: str
    payload: dict[str, Any]
    # How many times handling it started, this one included.
    attempts: int
    # Dropped only: whether a job was queued under its key (then that job answers its sender).
    job_queued: bool = False


class InboxRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def accept(
        self,
        key: str,
        *,
        platform: str,
        bot: str,
        person: str | None,
        payload: Mapping[str, Any],
        lease: Lease,
    ) -> bool:
        """Note an update, now `lease.owner`'s to handle; False (nothing changed) if it is here
        already: delivered again while it is being handled."""

        async def write(conn: AsyncConnection) -> bool:
            noted = await conn.execute(
                insert_ignoring_duplicates(conn, _INBOX)
                .values(
                    key=key,
                    platform=platform,
                    bot=bot,
                    person=person,
                    payload=dict(payload),
                    attempts=1,
                    received_at=utcnow(),
                    lease_owner=lease.owner,
                    lease_expires_at=lease_until(conn, lease.seconds),
                )
                .returning(_INBOX.c.key)
            )
            return noted.first() is not None

        return await self._db.run_write(write)

    async def claim(
        self, platform: str, bot: str, lease: Lease, *, limit: int = 100
    ) -> tuple[list[InboxItem], list[InboxItem]]:
        """Updates whose handler stopped or died, now `lease.owner`'s, oldest first; and those
        dropped instead, having been tried `MAX_ATTEMPTS` times (deleted, to be told about)."""
        async with self._db.write() as conn:
            rows = await leases.claim_free(
                conn,
                _INBOX,
                lease,
                key=_INBOX.c.key,
                where=[_INBOX.c.platform == platform, _INBOX.c.bot == bot],
                order_by=[_INBOX.c.received_at, _INBOX.c.key],
                limit=limit,
                returning=[_INBOX.c.key, _INBOX.c.payload, _INBOX.c.attempts, _INBOX.c.received_at],
            )
            claimed = sorted(rows, key=lambda row: (row.received_at, row.key))
            spent = [row for row in claimed if row.attempts >= MAX_ATTEMPTS]
            dropped: list[InboxItem] = []
            if spent:
                keys = [row.key for row in spent]
                queued = set(
                    (
                        await conn.execute(
                            select(_JOBS.c.request_key).where(_JOBS.c.request_key.in_(keys))
                        )
                    ).scalars()
                )
                await conn.execute(delete(_INBOX).where(_INBOX.c.key.in_(keys)))
                for key in keys:
                    await drop_taken(conn, key)
                dropped = [
                    InboxItem(row.key, dict(row.payload), row.attempts, row.key in queued)
                    for row in spent
                ]
            again = [row.key for row in claimed if row.attempts < MAX_ATTEMPTS]
            if again:
                await conn.execute(
                    update(_INBOX)
                    .where(_INBOX.c.key.in_(again))
                    .values(attempts=_INBOX.c.attempts + 1)
                )
            items = [
                InboxItem(row.key, dict(row.payload), row.attempts + 1)
                for row in claimed
                if row.attempts < MAX_ATTEMPTS
            ]
            return items, dropped

    async def renew(self, lease: Lease) -> None:
        """Extend the leases of the updates `lease.owner` is handling."""
        async with self._db.write() as conn:
            await leases.renew(conn, _INBOX, lease, key=_INBOX.c.key)

    async def release(self, owner: str) -> None:
        """Let go of the updates `owner` was handling (a clean stop): others take them at once."""
        async with self._db.write() as conn:
            await leases.release(conn, _INBOX, owner)

    async def done(self, key: str) -> None:
        """The update has been handled: it goes, and so do the waits it took."""

        async def write(conn: AsyncConnection) -> None:
            await conn.execute(delete(_INBOX).where(_INBOX.c.key == key))
            await drop_taken(conn, key)

        await self._db.run_write(write)


async def forget_inbox(conn: AsyncConnection, platform: str, person: str) -> None:
    """Every update of this person not handled yet (in the caller's transaction: `forget`'s)."""
    await conn.execute(
        delete(_INBOX).where(_INBOX.c.platform == platform, _INBOX.c.person == person)
    )
