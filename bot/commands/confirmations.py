"""One-time confirmation codes for destructive commands (`forget`), bound to one person."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable


class Confirmations:
    def __init__(self, ttl_seconds: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._pending: dict[str, tuple[str, float]] = {}

    def issue(self, owner: str) -> str:
        """A fresh code for `owner`; an earlier one of theirs stops working."""
        self._drop_expired()
        for code, (who, _) in list(self._pending.items()):
            if who == owner:
                del self._pending[code]
        code = secrets.token_urlsafe(12)
        self._pending[code] = (owner, self._clock() + self.ttl_seconds)
        return code

    def redeem(self, code: str, owner: str) -> bool:
        """True once, for the owner's unexpired code; someone else's code is left untouched."""
        self._drop_expired()
        entry = self._pending.get(code)
        if entry is None or not secrets.compare_digest(entry[0], owner):
            return False
        del self._pending[code]
        return True

    def _drop_expired(self) -> None:
        now = self._clock()
        for code, (_, expires) in list(self._pending.items()):
            if expires <= now:
                del self._pending[code]
