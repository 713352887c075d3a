"""Scoped settings: global, per community, per user, per user in a community.

A NULL scope column means "any", so one table holds every level and a single query fetches
all that apply to a request; the caller decides which level wins. NULLs never compare equal,
so no unique constraint can keep one row per scope and key: `set` keeps it, by looking and
writing inside one write transaction (serialised on SQLite by BEGIN IMMEDIATE). Should two
rows ever exist for one scope and key, `set` updates both and `unset` removes both.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.audit import write_audit
from storage.database import Database
from storage.models import Community, ScopedSetting, User, utcnow
from storage.records import AuditNote, PersonsSetting, SettingRecord

_SETTINGS = ScopedSetting.__table__
_USERS = User.__table__
_COMMUNITIES = Community.__table__


class SettingsRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def for_context(
        self, *, user_id: int | None, community_id: int | None
    ) -> list[SettingRecord]:
        """Every setting that applies to this user in this community, at any level."""
        async with self._db.read() as conn:
            return await settings_in(conn, user_id=user_id, community_id=community_id)

    async def for_person(
        self,
        key: str,
        *,
        platform: str,
        platform_user_id: str,
        platform_community_id: str | None,
    ) -> PersonsSetting:
        """`key`'s values for a person by their platform's ids, in one read: theirs (set for
        themselves, everywhere), their community's and everyone's (the global scope)."""
        user = select(_USERS.c.id).where(
            _USERS.c.platform == platform, _USERS.c.platform_user_id == platform_user_id
        )
        scopes = [
            (_SETTINGS.c.community_id.is_(None) & (_SETTINGS.c.user_id == user.scalar_subquery())),
            (_SETTINGS.c.community_id.is_(None) & _SETTINGS.c.user_id.is_(None)),
        ]
        if platform_community_id is not None:
            community = select(_COMMUNITIES.c.id).where(
                _COMMUNITIES.c.platform == platform,
                _COMMUNITIES.c.platform_community_id == platform_community_id,
            )
            scopes.append(
                _SETTINGS.c.user_id.is_(None)
                & (_SETTINGS.c.community_id == community.scalar_subquery())
            )
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(_SETTINGS.c.community_id, _SETTINGS.c.user_id, _SETTINGS.c.value)
                .where(_SETTINGS.c.key == key, or_(*scopes))
                .order_by(_SETTINGS.c.id)
            )
            found: dict[str, Any] = {}
            for community_id, user_id, value in rows:
                scope = "own" if user_id is not None else "everyone"
                scope = "community" if community_id is not None else scope
                found.setdefault(scope, value)
            return PersonsSetting(**found)

    async def set(
        self,
        *,
        community_id: int | None,
        user_id: int | None,
        key: str,
        value: Any,
        audit: AuditNote | None = None,
        by: str | None = None,
    ) -> None:
        """Set `key` at exactly this scope, replacing its value there, and log it; a person's
        own choice for themselves is not a moderation: `by` them, and not logged."""
        setter = audit.actor if audit is not None else by
        if setter is None:
            raise ValueError("a setting is set by someone: give audit or by")
        async with self._db.write() as conn:
            await _upsert(conn, community_id, user_id, key, value, setter)
            if audit is not None:
                await write_audit(conn, audit)

    async def update_list(
        self,
        *,
        community_id: int | None,
        user_id: int | None,
        key: str,
        add: str | None = None,
        remove: str | None = None,
        audit: AuditNote,
    ) -> bool:
        """Add `add` to (appended, if absent) and remove `remove` from (if present) the list
        `key` holds at exactly this scope (no row: an empty list), and log it, all in one write
        transaction, so concurrent edits never lose one another. True if the list changed;
        False, writing nothing, if it did not. ValueError if the value there is not a list.
        """
        if add is None and remove is None:
            raise ValueError("update_list needs a value to add or to remove")
        async with self._db.write() as conn:
            await _lock_scope(conn, community_id, user_id, key)
            rows = (
                await conn.execute(
                    select(_SETTINGS.c.value)
                    .where(*_exactly(community_id, user_id, key))
                    .order_by(_SETTINGS.c.id)
                )
            ).all()
            current = rows[0].value if rows else []
            if not isinstance(current, list):
                raise ValueError(f"setting {key!r} at this scope is not a list")
            value = list(current)
            if add is not None and add not in value:
                value.append(add)
            if remove is not None:
                value = [item for item in value if item != remove]
            if value == current:
                return False
            await _upsert(conn, community_id, user_id, key, value, audit.actor)
            await write_audit(conn, audit)
            return True

    async def unset(
        self,
        *,
        community_id: int | None,
        user_id: int | None,
        key: str,
        audit: AuditNote | None = None,
    ) -> bool:
        """Remove `key` at exactly this scope; False (and nothing logged) if it was not set.
        Without `audit`, a person's own choice: not logged."""
        async with self._db.write() as conn:
            removed = await conn.execute(
                delete(_SETTINGS).where(*_exactly(community_id, user_id, key))
            )
            if removed.rowcount == 0:
                return False
            if audit is not None:
                await write_audit(conn, audit)
            return True


async def _upsert(
    conn: AsyncConnection,
    community_id: int | None,
    user_id: int | None,
    key: str,
    value: Any,
    actor: str,
) -> None:
    """Write `key` at exactly this scope: update the row there, or insert one."""
    now = utcnow()
    updated = await conn.execute(
        update(_SETTINGS)
        .where(*_exactly(community_id, user_id, key))
        .values(value=value, updated_at=now, updated_by=actor)
    )
    if updated.rowcount == 0:
        await conn.execute(
            insert(_SETTINGS).values(
                community_id=community_id,
                user_id=user_id,
                key=key,
                value=value,
                updated_at=now,
                updated_by=actor,
            )
        )


async def settings_in(
    conn: AsyncConnection, *, user_id: int | None, community_id: int | None
) -> list[SettingRecord]:
    """Every setting that applies to this user in this community, at any level, oldest first."""
    rows = await conn.execute(
        select(_SETTINGS.c.community_id, _SETTINGS.c.user_id, _SETTINGS.c.key, _SETTINGS.c.value)
        .where(
            _applies(_SETTINGS.c.community_id, community_id),
            _applies(_SETTINGS.c.user_id, user_id),
        )
        .order_by(_SETTINGS.c.id)
    )
    return [SettingRecord(*row) for row in rows]


def _applies(column: Any, value: int | None) -> Any:
    """The row is for any (NULL) or for this one."""
    return column.is_(None) if value is None else or_(column.is_(None), column == value)


def _exactly(community_id: int | None, user_id: int | None, key: str) -> tuple[Any, ...]:
    return (
        _is(_SETTINGS.c.community_id, community_id),
        _is(_SETTINGS.c.user_id, user_id),
        _SETTINGS.c.key == key,
    )


def _is(column: Any, value: int | None) -> Any:
    return column.is_(None) if value is None else column == value


async def _lock_scope(
    conn: AsyncConnection, community_id: int | None, user_id: int | None, key: str
) -> None:
    """Serialise read-modify-writes of one scope and key. SQLite's BEGIN IMMEDIATE already
    does; PostgreSQL's READ COMMITTED would let two transactions read the same list (or both
    find no row), so there they take a transaction-scoped advisory lock on the scope."""
    if conn.dialect.name != "postgresql":
        return
    digest = hashlib.sha256(f"scoped_settings:{community_id}:{user_id}:{key}".encode()).digest()
    await conn.execute(select(func.pg_advisory_xact_lock(int.from_bytes(digest[:8], signed=True))))
