"""Updates in, durably: what a chat platform pushes once and never again (Telegram's updates).

Each update is noted in the inbox (`storage.inbox`) before the platform is told we have it, then
handled, then deleted. If the process handling it dies, another takes it over once its lease
has run out and handles it again; its request key (`request_key`) makes sure that a job it
queued is not queued twice. The same update delivered again while it is in the inbox is inert.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from storage.inbox import InboxItem, InboxRepository
from storage.leases import Lease

__all__ = ["Inbox", "InboxItem", "request_key"]

log = logging.getLogger(__name__)


def request_key(platform: str, bot: str, update_id: int) -> str:
    """The key of an update: the inbox's, and the request key of a job the update queues."""
    return f"{platform}:{bot}:{update_id}"


class Inbox:
    def __init__(self, repository: InboxRepository, lease: Lease) -> None:
        self._repository = repository
        self._lease = lease

    @property
    def check_interval(self) -> float:
        """How often a process renews what it handles and takes over what others dropped."""
        return self._lease.seconds / 3

    async def accept(
        self,
        platform: str,
        bot: str,
        update_id: int,
        *,
        person: str | None,
        payload: Mapping[str, Any],
    ) -> str | None:
        """Note an update, now this process's to handle: its key, or None if it is in the inbox
        already (delivered again while being handled: leave it be)."""
        key = request_key(platform, bot, update_id)
        fresh = await self._repository.accept(
            key, platform=platform, bot=bot, person=person, payload=payload, lease=self._lease
        )
        return key if fresh else None

    async def take_over(self, platform: str, bot: str) -> tuple[list[InboxItem], list[InboxItem]]:
        """Updates whose process stopped or died before handling them, now this process's to
        handle; and those dropped instead, whose senders should hear that it failed unless a
        job was queued for them (`InboxItem.job_queued`)."""
        items, dropped = await self._repository.claim(platform, bot, self._lease)
        for item in dropped:
            log.error(
                "update %s was dropped: every process that handled it died (%d times)%s",
                item.key,
                item.attempts,
                "; its job was queued" if item.job_queued else "",
            )
        return items, dropped

    async def done(self, key: str) -> None:
        await self._repository.done(key)

    async def renew(self) -> None:
        await self._repository.renew(self._lease)

    async def release(self) -> None:
        """Let go of what this process was handling (a clean stop): another takes it at once."""
        await self._repository.release(self._lease.owner)
