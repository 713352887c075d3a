"""Bans, everywhere or in one community, keyed by the person's pseudonym.

Not keyed by the user row: `forget` deletes that row (and must not lift a ban by doing so),
and a ban must be possible before the user ever spoke to the bot. The subject is
`storage.pseudonyms.Pseudonyms.subject(platform, platform_user_id)`, a keyed hash: the table
holds no platform id in clear, nor one that could be recovered by hashing every possible id,
and it still matches the same person on their return.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.audit import write_audit
from storage.database import Database
from storage.models import Ban, utcnow
from storage.records import AuditNote, BanRecord

_BANS = Ban.__table__


class BanRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def ban(
        self, subject: str, *, community_id: int | None, reason: str | None, audit: AuditNote
    ) -> bool:
        """Ban `subject` in `community_id` (None: everywhere) and log it; False, writing
        nothing, if that exact scope already has a ban."""
        async with self._db.write() as conn:
            if await _scope_banned(conn, subject, community_id):
                return False
            await conn.execute(
                insert(_BANS).values(
                    subject=subject,
                    community_id=community_id,
                    reason=reason,
                    banned_by=audit.actor,
                    at=utcnow(),
                )
            )
            await write_audit(conn, audit)
            return True

    async def unban(self, subject: str, *, community_id: int | None, audit: AuditNote) -> bool:
        """Lift the ban at exactly this scope (a global ban outlives a community's unban)."""
        async with self._db.write() as conn:
            removed = await conn.execute(
                delete(_BANS).where(_BANS.c.subject == subject, _scope(community_id))
            )
            if removed.rowcount == 0:
                return False
            await write_audit(conn, audit)
            return True

    async def find(self, subject: str, *, community_id: int | None) -> BanRecord | None:
        """The ban that keeps `subject` out of `community_id` (see `ban_in`)."""
        async with self._db.read() as conn:
            return await ban_in(conn, subject, community_id=community_id)


async def ban_in(
    conn: AsyncConnection, subject: str, *, community_id: int | None
) -> BanRecord | None:
    """The ban that keeps `subject` out of `community_id` (None: a DM, where only a global ban
    applies). A global ban is preferred: it is the one a community cannot lift."""
    applies = (
        _BANS.c.community_id.is_(None)
        if community_id is None
        else or_(_BANS.c.community_id.is_(None), _BANS.c.community_id == community_id)
    )
    row = (
        await conn.execute(
            select(_BANS.c.community_id, _BANS.c.reason, _BANS.c.banned_by, _BANS.c.at)
            .where(_BANS.c.subject == subject, applies)
            .order_by(_BANS.c.community_id.asc().nulls_first(), _BANS.c.id)
            .limit(1)
        )
    ).one_or_none()
    return BanRecord(*row) if row else None


def _scope(community_id: int | None) -> Any:
    column = _BANS.c.community_id
    return column.is_(None) if community_id is None else column == community_id


async def _scope_banned(conn: AsyncConnection, subject: str, community_id: int | None) -> bool:
    found = await conn.execute(
        select(_BANS.c.id).where(_BANS.c.subject == subject, _scope(community_id))
    )
    return found.first() is not None
