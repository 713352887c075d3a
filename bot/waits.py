"""Waiting for what a command lacks: the photo after a bare `/avatar`, a choice on a keyboard.

Kept in the database (`storage.waits`), so that the answer becomes the command that was asked
for whichever replica it reaches, and so that a wait's end is announced once, by whichever
replica claims it. The adapter keeps its own note of the command with the wait (its words, the
messages involved), opaque here.

A wait is taken under the request key of the update that completes it (`take`): that update
handled again after a crash takes the same wait again, any other finds it gone.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

from storage.leases import Lease
from storage.waits import WaitRecord as Wait
from storage.waits import WaitRepository

__all__ = ["Wait", "Waits"]


class Waits:
    def __init__(self, repository: WaitRepository, lease: Lease) -> None:
        self._repository = repository
        self._lease = lease

    @staticmethod
    def new_token() -> str:
        """Unguessable, and short enough for a button's data (Telegram allows 64 bytes)."""
        return secrets.token_hex(6)

    async def for_photo(
        self, platform: str, chat: str, person: str, note: Mapping[str, Any], *, seconds: float
    ) -> None:
        """Wait `seconds` for a photo from `person` in `chat` (in place of an earlier wait)."""
        await self._repository.add(
            self.new_token(),
            platform=platform,
            chat=chat,
            person=person,
            for_photo=True,
            request=note,
            seconds=seconds,
        )

    async def for_choice(
        self,
        token: str,
        platform: str,
        chat: str,
        person: str,
        note: Mapping[str, Any],
        *,
        seconds: float,
    ) -> None:
        """Wait `seconds` for a choice on the keyboard whose buttons carry `token`."""
        await self._repository.add(
            token,
            platform=platform,
            chat=chat,
            person=person,
            for_photo=False,
            request=note,
            seconds=seconds,
        )

    async def photo_awaited(
        self, platform: str, chat: str, person: str, *, key: str
    ) -> Wait | None:
        """The wait for a photo from `person` in `chat` that the update `key` may complete."""
        return await self._repository.photo_wait(platform, chat, person, key=key)

    async def choice(self, token: str, *, key: str) -> Wait | None:
        """The wait for a choice on the keyboard `token`, if the update `key` may complete it."""
        return await self._repository.wait(token, key=key)

    async def take(self, wait: Wait, *, key: str) -> bool:
        """Complete the wait with the update `key`: False if it ended or was completed by
        another update meanwhile."""
        return await self._repository.take(wait.token, key=key)

    async def cancel(
        self, platform: str, chat: str, person: str, *, photo_only: bool = False
    ) -> int:
        """End what `person` is waited on for in `chat`, unannounced; how many waits ended."""
        return await self._repository.cancel(platform, chat, person, photo_only=photo_only)

    async def ended(self, platform: str) -> list[Wait]:
        """Waits that ran out with nobody completing them, now this process's to announce (then
        `announced`); if it dies first, another process announces them."""
        return await self._repository.claim_ended(platform, self._lease)

    async def announced(self, wait: Wait) -> None:
        await self._repository.announced(wait.token, owner=self._lease.owner)
