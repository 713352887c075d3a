"""Deferred interactions that a crash cannot leave "thinking…" (Discord's slash commands).

When an interaction is deferred, it is noted (`storage.interactions`) with its token sealed under
a key derived from the shared pseudonym key (`storage.sealing`), for as long as the token lives,
and the note goes once the interaction has been answered. A process whose handler died leaves
the note behind; once its lease has run out, another process claims it and ends the
interaction: if the request had queued its job, by saying so (the job's result then comes the
way every result does after a restart, posted in the channel), and if not, by saying sorry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from storage.interactions import InteractionRepository, NewDeferral
from storage.leases import Lease
from storage.sealing import Sealer

log = logging.getLogger(__name__)

# What the sealing key is derived for (`Pseudonyms.derived_key`).
SEALING_PURPOSE = "interaction tokens"


def request_key(platform: str, interaction_id: int) -> str:
    """The key of an interaction: its note's, and the request key of a job it queues."""
    return f"{platform}:{interaction_id}"


@dataclass(frozen=True)
class Abandoned:
    """An interaction whose process died before answering it, now this process's to end."""

    key: str
    application_id: int
    # The "thinking…" message to replace (None: the first follow-up replaces it).
    message_id: int | None
    # The job the request queued before its process died, if it got that far.
    job_id: str | None
    token: str = field(repr=False)


class DeferredInteractions:
    def __init__(self, repository: InteractionRepository, sealer: Sealer, lease: Lease) -> None:
        self._repository = repository
        self._sealer = sealer
        self._lease = lease

    @property
    def check_interval(self) -> float:
        """How often a process renews what it answers and ends what others left."""
        return self._lease.seconds / 3

    async def deferred(
        self,
        platform: str,
        interaction_id: int,
        *,
        person: str,
        application_id: int,
        message_id: int | None,
        token: str,
        expires_at: datetime,
    ) -> str:
        """Note an interaction this process deferred and is answering; its key."""
        key = request_key(platform, interaction_id)
        await self._repository.add(
            NewDeferral(
                key=key,
                platform=platform,
                person=person,
                application_id=str(application_id),
                message_id=None if message_id is None else str(message_id),
                sealed_token=self._sealer.seal(token, row=key),
                expires_at=expires_at,
            ),
            self._lease,
        )
        return key

    async def answered(self, key: str) -> None:
        await self._repository.answered(key)

    async def abandoned(self, platform: str) -> list[Abandoned]:
        """Interactions whose process stopped or died before answering: now this process's to
        end (then `answered`, or `retry_later`)."""
        found = []
        for row in await self._repository.claim_abandoned(platform, self._lease):
            try:
                token = self._sealer.open(row.sealed_token, row=row.key)
            except ValueError:
                log.error("interaction %s: its token does not open; it is dropped", row.key)
                await self._repository.answered(row.key)
                continue
            found.append(
                Abandoned(
                    key=row.key,
                    application_id=int(row.application_id),
                    message_id=None if row.message_id is None else int(row.message_id),
                    job_id=row.job_id,
                    token=token,
                )
            )
        return found

    async def retry_later(self, key: str) -> None:
        """Ending it failed for now: the next look for abandoned interactions tries again."""
        await self._repository.let_go(key, self._lease.owner)

    async def renew(self) -> None:
        await self._repository.renew(self._lease)

    async def release(self) -> None:
        """Let go of what this process was answering (a clean stop): another ends it at once."""
        await self._repository.release(self._lease.owner)
