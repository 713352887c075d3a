"""A test adapter: a chat where people type commands as text, press buttons and see replies.

It does what a real adapter does and no more: it turns what a person typed (and attached) into a
command request, and collects the reply and the job's events, whose texts it shows as they are.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from bot.app import HeadshotApp
from bot.commands import Actor
from bot.jobs.events import FINAL_EVENTS, JobEvent
from bot.replies import Reply
from bot.ui import Button

PLATFORM = "test"


@dataclass
class Exchange:
    """What one person saw after one command: the reply, then the job's events if it made one."""

    reply: Reply
    events: list[JobEvent] = field(default_factory=list)
    follower: asyncio.Task[None] | None = None

    # The event texts, as the follower read them (in the asker's language).
    event_texts: list[str] = field(default_factory=list)

    @property
    def texts(self) -> list[str]:
        return [self.reply.text, *self.event_texts]

    @property
    def final(self) -> JobEvent:
        assert self.events and isinstance(self.events[-1], FINAL_EVENTS), self.texts
        return self.events[-1]

    async def finished(self) -> Exchange:
        if self.follower is not None:
            await asyncio.wait_for(self.follower, 30)
        return self


class TestChat:
    __test__ = False  # not a test class, despite its name

    def __init__(self, app: HeadshotApp) -> None:
        self.app = app

    def actor(
        self,
        user: str,
        *,
        community: str | None = None,
        moderator: bool = False,
        locale: str | None = None,
    ) -> Actor:
        return Actor(PLATFORM, user, community, is_moderator=moderator, locale=locale)

    async def send(
        self,
        text: str,
        *,
        user: str = "alice",
        community: str | None = None,
        moderator: bool = False,
        attachments: dict[str, bytes] | None = None,
        wait: bool = True,
        locale: str | None = None,
    ) -> Exchange:
        """Type `text` as `user`, whose app runs in `locale`; with `wait`, return once the job
        it queued (if any) has ended. The job's events are read in the language `user` was
        answered in, as an adapter shows them."""
        actor = self.actor(user, community=community, moderator=moderator, locale=locale)
        async with self.app.commands.answering(actor):
            reply = await self.app.commands.run_line(actor, text, attachments)
            return await self._exchange(reply, wait)

    async def press(
        self,
        button: Button,
        *,
        user: str = "alice",
        community: str | None = None,
        moderator: bool = False,
        wait: bool = True,
        locale: str | None = None,
    ) -> Exchange:
        """Press a button as `user`, the way a platform carries it: as text in callback data."""
        actor = self.actor(user, community=community, moderator=moderator, locale=locale)
        async with self.app.commands.answering(actor):
            reply = await self.app.commands.run_line(actor, button.encode())
            return await self._exchange(reply, wait)

    async def _exchange(self, reply: Reply, wait: bool) -> Exchange:
        exchange = Exchange(reply)
        if reply.job_id is None:
            return exchange

        async def follow(job_id: str) -> None:
            async for event in self.app.commands.follow(job_id):
                exchange.events.append(event)
                exchange.event_texts.append(event.text)

        exchange.follower = asyncio.create_task(follow(reply.job_id))
        if wait:
            await exchange.finished()
        return exchange
