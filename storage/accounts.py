"""Users, communities, credit balances and the audit log."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import ledger
from storage.database import Database
from storage.models import AuditEntry, Community, User, utcnow
from storage.records import Allowance, UserRecord


class AccountRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def user(self, platform: str, platform_user_id: str) -> UserRecord:
        """The user with this platform id, created on first sight."""
        row = await self._find_user(platform, platform_user_id)
        if row is None:
            async with self._db.write() as conn:
                # Another request may have created the user since we looked: then this is a no-op.
                await conn.execute(
                    _insert_ignoring_duplicates(conn, _USERS).values(
                        platform=platform, platform_user_id=platform_user_id, created_at=utcnow()
                    )
                )
            row = await self._find_user(platform, platform_user_id)
        assert row is not None
        return row

    async def community(self, platform: str, platform_community_id: str) -> int:
        """The community's id, created on first sight."""
        where = (
            _COMMUNITIES.c.platform == platform,
            _COMMUNITIES.c.platform_community_id == platform_community_id,
        )
        async with self._db.write() as conn:
            found = (await conn.execute(select(_COMMUNITIES.c.id).where(*where))).scalar()
            if found is not None:
                return int(found)
            values = {
                "platform": platform,
                "platform_community_id": platform_community_id,
                "created_at": utcnow(),
            }
            inserted = await conn.execute(
                insert(_COMMUNITIES).values(values).returning(_COMMUNITIES.c.id)
            )
            return int(inserted.scalar_one())

    async def allowance(self, user_id: int, *, daily_quota: int, today: date) -> Allowance:
        async with self._db.read() as conn:
            return await ledger.allowance(conn, user_id, daily_quota, today)

    async def grant(self, user_id: int, credits: int, *, actor: str, note: str | None) -> None:
        async with self._db.write() as conn:
            await ledger.grant(conn, user_id=user_id, credits=credits, note=note)
            await _audit(
                conn,
                actor=actor,
                action="grant",
                target=f"user:{user_id}",
                community_id=None,
                details={"credits": credits, "note": note},
            )

    async def ledger_violations(self) -> list[str]:
        async with self._db.read() as conn:
            return await ledger.violations(conn)

    async def _find_user(self, platform: str, platform_user_id: str) -> UserRecord | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(
                    select(_USERS.c.id, _USERS.c.platform, _USERS.c.platform_user_id).where(
                        _USERS.c.platform == platform,
                        _USERS.c.platform_user_id == platform_user_id,
                    )
                )
            ).one_or_none()
            return UserRecord(*row) if row else None


_USERS = User.__table__
_COMMUNITIES = Community.__table__
_AUDIT = AuditEntry.__table__


async def _audit(conn: AsyncConnection, **values: Any) -> None:
    await conn.execute(insert(_AUDIT).values(at=utcnow(), **values))


def _insert_ignoring_duplicates(conn: AsyncConnection, table: Any) -> Any:
    """INSERT that skips a row violating a unique constraint, in the connection's dialect."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table).on_conflict_do_nothing()
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table).on_conflict_do_nothing()
