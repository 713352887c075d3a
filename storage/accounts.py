"""Users, communities, credit balances and the audit log."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from storage import ledger
from storage.database import Database
from storage.models import AuditEntry, Community, User
from storage.records import Allowance, UserRecord


class AccountRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def user(self, platform: str, platform_user_id: str) -> UserRecord:
        """The user with this platform id, created on first sight."""
        row = await self._find_user(platform, platform_user_id)
        if row is None:
            try:
                async with self._db.write() as session:
                    session.add(User(platform=platform, platform_user_id=platform_user_id))
            except IntegrityError:
                pass  # created concurrently: the row we want exists now
            row = await self._find_user(platform, platform_user_id)
        assert row is not None
        return row

    async def community(self, platform: str, platform_community_id: str) -> int:
        """The community's id, created on first sight."""
        async with self._db.write() as session:
            stmt = select(Community.id).where(
                Community.platform == platform,
                Community.platform_community_id == platform_community_id,
            )
            found = (await session.execute(stmt)).scalar_one_or_none()
            if found is not None:
                return int(found)
            row = Community(platform=platform, platform_community_id=platform_community_id)
            session.add(row)
            await session.flush()
            return row.id

    async def allowance(self, user_id: int, *, daily_quota: int, today: date) -> Allowance:
        async with self._db.read() as session:
            return await ledger.allowance(session, user_id, daily_quota, today)

    async def grant(self, user_id: int, credits: int, *, actor: str, note: str | None) -> None:
        async with self._db.write() as session:
            ledger.grant(session, user_id=user_id, credits=credits, note=note)
            session.add(
                AuditEntry(
                    actor=actor,
                    action="grant",
                    target=f"user:{user_id}",
                    details={"credits": credits, "note": note},
                )
            )

    async def ledger_violations(self) -> list[str]:
        async with self._db.read() as session:
            return await ledger.violations(session)

    async def audit(
        self,
        *,
        actor: str,
        action: str,
        target: str | None = None,
        community_id: int | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        async with self._db.write() as session:
            session.add(
                AuditEntry(
                    actor=actor,
                    action=action,
                    target=target,
                    community_id=community_id,
                    details=details,
                )
            )

    async def _find_user(self, platform: str, platform_user_id: str) -> UserRecord | None:
        async with self._db.read() as session:
            row = (
                await session.execute(
                    select(User).where(
                        User.platform == platform, User.platform_user_id == platform_user_id
                    )
                )
            ).scalar_one_or_none()
            return UserRecord(row.id, row.platform, row.platform_user_id) if row else None
