"""Users, communities and credit balances.

A user row created for a platform id whose person was forgotten earlier takes back what they
had used of those days' allowances (`storage.history`'s forgotten usage), in the transaction
that creates it: forgetting and returning cannot reset the daily allowance.
"""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import bindparam, delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import ledger
from storage.audit import write_audit
from storage.database import Database
from storage.dml import insert_ignoring_duplicates
from storage.models import Community, ForgottenUsage, User, utcnow
from storage.pseudonyms import Pseudonyms
from storage.records import Allowance, AuditNote, PlatformCommunity, PlatformUser, UserRecord


class AccountRepository:
    def __init__(self, db: Database, pseudonyms: Pseudonyms | None = None) -> None:
        """Without `pseudonyms`, a returning user's forgotten usage is not carried over."""
        self._db = db
        self._pseudonyms = pseudonyms

    async def user(self, platform: str, platform_user_id: str) -> UserRecord:
        """The user with this platform id, created on first sight."""
        row = await self.find_user(platform, platform_user_id)
        if row is not None:
            return row
        async with self._db.write() as conn:
            user_id = await user_id_in(
                conn, PlatformUser(platform, platform_user_id), self._pseudonyms
            )
        return UserRecord(user_id, platform, platform_user_id)

    async def find_user(self, platform: str, platform_user_id: str) -> UserRecord | None:
        """The user with this platform id, or None: looking someone up never creates them."""
        async with self._db.read() as conn:
            return await find_user_in(conn, platform, platform_user_id)

    async def community(self, platform: str, platform_community_id: str) -> int:
        """The community's id, created on first sight (by whichever of two requests at once
        comes first: the other finds it)."""

        async def write(conn: AsyncConnection) -> int:
            return await community_id_in(conn, PlatformCommunity(platform, platform_community_id))

        return await self._db.run_write(write)

    async def find_community(self, platform: str, platform_community_id: str) -> int | None:
        """The community's id, or None: looking a community up never creates it."""
        where = _community_is(platform, platform_community_id)
        async with self._db.read() as conn:
            found = (await conn.execute(select(_COMMUNITIES.c.id).where(*where))).scalar()
            return None if found is None else int(found)

    async def allowance(self, user_id: int, *, daily_quota: int, today: date) -> Allowance:
        async with self._db.read() as conn:
            return await ledger.allowance(conn, user_id, daily_quota, today)

    async def grant(
        self,
        user_id: int,
        credits: int,
        *,
        actor: str,
        note: str | None,
        community_id: int | None = None,
    ) -> None:
        """Give a user credits, logged under `community_id` (None: the operator's global log).

        The audit target is the user's platform id, which is what a moderator knows them by
        (and what `forget` redacts), not the internal row id.
        """
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    select(_USERS.c.platform, _USERS.c.platform_user_id).where(
                        _USERS.c.id == user_id
                    )
                )
            ).one_or_none()
            if row is None:
                raise LookupError(f"no user {user_id}")
            await ledger.grant(conn, user_id=user_id, credits=credits, note=note)
            await write_audit(
                conn,
                AuditNote(
                    actor=actor,
                    action="grant",
                    target=f"{row.platform}:{row.platform_user_id}",
                    community_id=community_id,
                    details={"credits": credits, "note": note},
                ),
            )

    async def ledger_violations(self) -> list[str]:
        async with self._db.read() as conn:
            return await ledger.violations(conn)


_USERS = User.__table__
_COMMUNITIES = Community.__table__
_FORGOTTEN = ForgottenUsage.__table__
# Built once, as every request runs it (see storage/ledger.py).
_FIND_USER = select(_USERS.c.id, _USERS.c.platform, _USERS.c.platform_user_id).where(
    _USERS.c.platform == bindparam("platform"),
    _USERS.c.platform_user_id == bindparam("platform_user_id"),
)


async def find_user_in(
    conn: AsyncConnection, platform: str, platform_user_id: str
) -> UserRecord | None:
    """The user with this platform id, or None (never made here)."""
    row = (
        await conn.execute(_FIND_USER, {"platform": platform, "platform_user_id": platform_user_id})
    ).one_or_none()
    return UserRecord(*row) if row else None


async def user_id_in(
    conn: AsyncConnection, who: PlatformUser, pseudonyms: Pseudonyms | None
) -> int:
    """`who`'s user id, in a write transaction that makes their row on first sight: then the
    usage they had when they were forgotten is carried over (with `pseudonyms`), in the same
    transaction, so that whatever it goes on to reserve is counted against it."""
    found = await find_user_in(conn, who.platform, who.platform_user_id)
    if found is not None:
        return found.id
    # Another transaction may have made the row since we looked (PostgreSQL: this insert waits
    # for it): then nothing is inserted, and the carryover was theirs to move.
    inserted = await conn.execute(
        insert_ignoring_duplicates(conn, _USERS)
        .values(platform=who.platform, platform_user_id=who.platform_user_id, created_at=utcnow())
        .returning(_USERS.c.id)
    )
    new_id = inserted.scalar_one_or_none()
    if new_id is None:
        made = await find_user_in(conn, who.platform, who.platform_user_id)
        assert made is not None
        return made.id
    if pseudonyms is not None:
        subject = pseudonyms.subject(who.platform, who.platform_user_id)
        await _carry_over(conn, int(new_id), subject)
    return int(new_id)


async def community_id_in(conn: AsyncConnection, where: PlatformCommunity) -> int:
    """The community's id, in a write transaction that makes its row on first sight."""
    named = _community_is(where.platform, where.platform_community_id)
    found = (await conn.execute(select(_COMMUNITIES.c.id).where(*named))).scalar()
    if found is not None:
        return int(found)
    values = {
        "platform": where.platform,
        "platform_community_id": where.platform_community_id,
        "created_at": utcnow(),
    }
    await conn.execute(insert_ignoring_duplicates(conn, _COMMUNITIES).values(values))
    return int((await conn.execute(select(_COMMUNITIES.c.id).where(*named))).scalar_one())


async def _carry_over(conn: AsyncConnection, user_id: int, subject: str) -> None:
    """Move the forgotten usage of `subject` into the new user's ledger."""
    rows = (
        await conn.execute(
            select(_FORGOTTEN.c.id, _FORGOTTEN.c.day, _FORGOTTEN.c.credits)
            .where(_FORGOTTEN.c.subject == subject)
            .order_by(_FORGOTTEN.c.id)
        )
    ).all()
    if not rows:
        return
    await ledger.carry_over(
        conn, user_id=user_id, usage=[(row.day, row.credits) for row in rows if row.credits > 0]
    )
    await conn.execute(delete(_FORGOTTEN).where(_FORGOTTEN.c.id.in_([row.id for row in rows])))


def _community_is(platform: str, platform_community_id: str) -> tuple[Any, ...]:
    return (
        _COMMUNITIES.c.platform == platform,
        _COMMUNITIES.c.platform_community_id == platform_community_id,
    )
