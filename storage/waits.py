"""What a chat adapter waits for from someone: the photo after a bare `/avatar`, or a choice on
a keyboard. Kept here rather than in a process's memory, so that whichever replica the answer
reaches finds the command it completes, and a wait outlives a restart.

A wait is taken by the update that brings what was missing, under that update's request key:
the same update handled again (its first handler died) takes it again, any other finds it gone.
The waits an update took go once that update is done (`storage.inbox`). A wait nobody took
ends at `expires_at`; its end is announced once, by the process that claims it (a lease, as in
`storage.leases`, so that if that one dies before announcing, another does).

Times are the database's (`leases.database_now`), so replicas whose clocks differ agree.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import leases
from storage.database import Database
from storage.leases import Lease, database_now, lease_until
from storage.models import ChatWait

_WAITS = ChatWait.__table__
# A wait taken by an update whose handling never finished (the update itself was forgotten):
# dropped this long after it would have ended.
STALE_TAKEN = timedelta(days=1)


@dataclass(frozen=True)
class WaitRecord:
    token: str
    chat: str
    person: str
    for_photo: bool
    request: dict[str, Any]


class WaitRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self,
        token: str,
        *,
        platform: str,
        chat: str,
        person: str,
        for_photo: bool,
        request: Mapping[str, Any],
        seconds: float,
    ) -> None:
        """Start a wait of `seconds`. A wait for a photo replaces the person's earlier one in
        that chat (a photo can complete one command only)."""
        async with self._db.write() as conn:
            if for_photo:
                await conn.execute(
                    delete(_WAITS).where(_of(platform, chat, person), _untaken_photo())
                )
            await conn.execute(
                insert(_WAITS).values(
                    token=token,
                    platform=platform,
                    chat=chat,
                    person=person,
                    for_photo=for_photo,
                    request=dict(request),
                    expires_at=lease_until(conn, seconds),
                )
            )

    async def photo_wait(
        self, platform: str, chat: str, person: str, *, key: str
    ) -> WaitRecord | None:
        """The person's wait for a photo in this chat: open, or taken under `key` already."""
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(_WAITS)
                    .where(_of(platform, chat, person), _WAITS.c.for_photo, _open_for(conn, key))
                    .order_by(_WAITS.c.expires_at.desc())
                    .limit(1)
                )
            ).one_or_none()
            return _record(row) if row is not None else None

    async def wait(self, token: str, *, key: str) -> WaitRecord | None:
        """The wait with this token: open, or taken under `key` already."""
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(_WAITS).where(_WAITS.c.token == token, _open_for(conn, key))
                )
            ).one_or_none()
            return _record(row) if row is not None else None

    async def take(self, token: str, *, key: str) -> bool:
        """Take the wait for the update `key`: False if it ended or another update took it."""
        async with self._db.write() as conn:
            taken = await conn.execute(
                update(_WAITS)
                .where(_WAITS.c.token == token, _open_for(conn, key))
                .values(taken_by=key)
            )
            return taken.rowcount == 1

    async def cancel(
        self, platform: str, chat: str, person: str, *, photo_only: bool = False
    ) -> int:
        """End the person's open waits in this chat (only the one for a photo, if so asked),
        unannounced; how many there were. A look first: most commands end no wait."""
        where = [_of(platform, chat, person), _WAITS.c.taken_by.is_(None)]
        if photo_only:
            where.append(_WAITS.c.for_photo)
        async with self._db.read() as conn:
            if not (await conn.execute(select(exists().where(*where)))).scalar_one():
                return 0
        async with self._db.write() as conn:
            ended = await conn.execute(delete(_WAITS).where(*where))
            return int(ended.rowcount)

    async def claim_ended(
        self, platform: str, lease: Lease, *, limit: int = 100
    ) -> list[WaitRecord]:
        """Waits of this platform that ended with nobody taking them, now `lease.owner`'s to
        announce (then `announced`). A look first, so that a quiet minute writes nothing."""
        async with self._db.read() as conn:
            now = database_now(conn)
            unclaimed = or_(_WAITS.c.lease_expires_at.is_(None), _WAITS.c.lease_expires_at < now)
            due = await conn.execute(
                select(exists().where(_WAITS.c.platform == platform, _ended(conn), unclaimed))
            )
            if not due.scalar_one():
                return []
        async with self._db.write() as conn:
            now = database_now(conn)
            await conn.execute(
                delete(_WAITS).where(
                    _WAITS.c.platform == platform,
                    _WAITS.c.taken_by.is_not(None),
                    _WAITS.c.expires_at < now - STALE_TAKEN,
                )
            )
            rows = await leases.claim_free(
                conn,
                _WAITS,
                lease,
                key=_WAITS.c.token,
                where=[_WAITS.c.platform == platform, _ended(conn)],
                order_by=[_WAITS.c.expires_at],
                limit=limit,
                returning=[_WAITS],
            )
            return [_record(row) for row in rows]

    async def announced(self, token: str, *, owner: str) -> None:
        """The end of a wait `owner` claimed has been told: it goes."""
        async with self._db.write() as conn:
            await conn.execute(
                delete(_WAITS).where(_WAITS.c.token == token, _WAITS.c.lease_owner == owner)
            )


async def drop_taken(conn: AsyncConnection, key: str) -> None:
    """The waits the update `key` took, now that it is done (in the caller's transaction)."""
    await conn.execute(delete(_WAITS).where(_WAITS.c.taken_by == key))


async def forget_waits(conn: AsyncConnection, platform: str, person: str) -> None:
    """Every wait of this person (in the caller's transaction: `forget`'s)."""
    await conn.execute(
        delete(_WAITS).where(_WAITS.c.platform == platform, _WAITS.c.person == person)
    )


def _of(platform: str, chat: str, person: str) -> Any:
    return and_(_WAITS.c.platform == platform, _WAITS.c.person == person, _WAITS.c.chat == chat)


def _untaken_photo() -> Any:
    return and_(_WAITS.c.for_photo, _WAITS.c.taken_by.is_(None))


def _open_for(conn: AsyncConnection, key: str) -> Any:
    """Not ended and not taken, or taken by `key` (its handling is being done again)."""
    return or_(
        and_(_WAITS.c.taken_by.is_(None), _WAITS.c.expires_at > database_now(conn)),
        _WAITS.c.taken_by == key,
    )


def _ended(conn: AsyncConnection) -> Any:
    """Ended with nobody taking it."""
    return and_(_WAITS.c.taken_by.is_(None), _WAITS.c.expires_at <= database_now(conn))


def _record(row: Any) -> WaitRecord:
    return WaitRecord(
        token=row.token,
        chat=row.chat,
        person=row.person,
        for_photo=bool(row.for_photo),
        request=dict(row.request),
    )
