"""The audit log: who did what to whom, written in the same transaction as the action itself.

An action and its audit row commit together or not at all, so the log can neither claim an
action that was rolled back nor miss one that happened.
"""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.database import Database
from storage.models import AuditEntry, utcnow
from storage.records import AuditNote, AuditRecord

_AUDIT = AuditEntry.__table__


async def write_audit(conn: AsyncConnection, note: AuditNote) -> None:
    """Append `note` to the audit log, in the caller's transaction."""
    await conn.execute(
        insert(_AUDIT).values(
            at=utcnow(),
            actor=note.actor,
            action=note.action,
            target=note.target,
            community_id=note.community_id,
            details=note.details,
        )
    )


class AuditRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, note: AuditNote) -> None:
        """An audit row on its own, for actions that write nothing else (a refused command)."""
        async with self._db.write() as conn:
            await write_audit(conn, note)

    async def recent(
        self, community_id: int | None, *, limit: int = 20, offset: int = 0
    ) -> list[AuditRecord]:
        """The newest entries first. `community_id=None` is the global log (operator actions),
        never another community's entries: a moderator sees their own community only."""
        scope = (
            _AUDIT.c.community_id.is_(None)
            if community_id is None
            else _AUDIT.c.community_id == community_id
        )
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(
                    _AUDIT.c.at,
                    _AUDIT.c.actor,
                    _AUDIT.c.action,
                    _AUDIT.c.target,
                    _AUDIT.c.community_id,
                    _AUDIT.c.details,
                )
                .where(scope)
                .order_by(_AUDIT.c.at.desc(), _AUDIT.c.id.desc())
                .limit(limit)
                .offset(offset)
            )
            return [
                AuditRecord(
                    at=row.at,
                    actor=row.actor,
                    action=row.action,
                    target=row.target,
                    community_id=row.community_id,
                    details=dict(row.details) if row.details is not None else None,
                )
                for row in rows
            ]
