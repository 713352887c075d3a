"""One-time confirmation codes for destructive commands (`forget`), bound to one person.

Kept in the database, so that a code shown by one replica is taken by any other. A code is
stored only as its hash and its owner only as a pseudonym (`storage.pseudonyms`).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import delete, insert, or_

from storage.database import Database
from storage.models import Confirmation, utcnow

_CONFIRMATIONS = Confirmation.__table__


class ConfirmationRepository:
    def __init__(
        self,
        db: Database,
        *,
        ttl_seconds: float = 300.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._db = db
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    async def issue(self, owner: str) -> str:
        """A fresh code for `owner`; an earlier one of theirs stops working."""
        code = secrets.token_urlsafe(12)
        now = self._clock()
        async with self._db.write() as conn:
            await conn.execute(
                delete(_CONFIRMATIONS).where(
                    or_(_CONFIRMATIONS.c.owner == owner, _CONFIRMATIONS.c.expires_at <= now)
                )
            )
            await conn.execute(
                insert(_CONFIRMATIONS).values(
                    code_hash=_hash(code),
                    owner=owner,
                    expires_at=now + timedelta(seconds=self.ttl_seconds),
                )
            )
        return code

    async def redeem(self, code: str, owner: str) -> bool:
        """True once, for the owner's unexpired code; someone else's code is left untouched."""
        async with self._db.write() as conn:
            taken = await conn.execute(
                delete(_CONFIRMATIONS).where(
                    _CONFIRMATIONS.c.code_hash == _hash(code),
                    _CONFIRMATIONS.c.owner == owner,
                    _CONFIRMATIONS.c.expires_at > self._clock(),
                )
            )
            return taken.rowcount == 1


def _hash(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()
