"""A job's progress and result, shown where its command was run.

While the interaction's token is valid (15 minutes), progress edits the command's own message
and the result takes its place. After that, or after a restart (the token is never stored),
the result is posted in the channel as a reply that mentions the user, or sent to them
directly if the channel will not take it. Where to deliver is noted in the database when the
job is queued and cleared once the result is out, so that a restart loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import discord

from adapters.discord.rendering import event_message
from bot.commands import CommandLayer
from bot.events import FINAL_EVENTS, JobEvent

log = logging.getLogger(__name__)

PLATFORM = "discord"
# Discord accepts edits through an interaction's token for 15 minutes; stop a little before.
TOKEN_LIFETIME = timedelta(minutes=15) - timedelta(seconds=30)
# Progress edits are coalesced: at most one per interval, always the latest state.
EDIT_INTERVAL = 2.0


@dataclass(frozen=True)
class Target:
    """Where a result goes when the interaction can no longer be used (no token in here)."""

    channel_id: int
    user_id: int
    message_id: int | None = None
    guild_id: int | None = None

    @classmethod
    def of(cls, interaction: discord.Interaction, message_id: int | None) -> Target:
        if interaction.channel_id is None:
            raise ValueError("an interaction without a channel")
        return cls(interaction.channel_id, interaction.user.id, message_id, interaction.guild_id)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Target:
        def number(key: str, *, optional: bool = False) -> int | None:
            value = data.get(key)
            if value is None and optional:
                return None
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"delivery target without a valid {key}: {dict(data)!r}")
            return value

        channel, user = number("channel_id"), number("user_id")
        assert channel is not None and user is not None
        return cls(
            channel, user, number("message_id", optional=True), number("guild_id", optional=True)
        )

    def to_json(self) -> dict[str, int | None]:
        return asdict(self)


class Throttle:
    """Shows the latest of a stream of items, at most one every `interval` seconds."""

    def __init__(self, show: Callable[[JobEvent], Awaitable[None]], interval: float) -> None:
        self._show = show
        self._interval = interval
        self._latest: JobEvent | None = None
        self._shown_at = float("-inf")
        self._task: asyncio.Task[None] | None = None

    def offer(self, item: JobEvent) -> None:
        self._latest = item
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while self._latest is not None:
            wait = self._shown_at + self._interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            item, self._latest = self._latest, None
            if item is None:
                return
            self._shown_at = time.monotonic()
            await self._show(item)

    async def close(self) -> None:
        """Drop what is not shown yet and stop (an edit in flight is abandoned)."""
        self._latest = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class JobDelivery:
    """Follows one job to its end and shows it. `interaction` is None after a restart."""

    def __init__(
        self,
        client: discord.Client,
        layer: CommandLayer,
        job_id: str,
        target: Target,
        interaction: discord.Interaction | None,
        *,
        edit_interval: float = EDIT_INTERVAL,
    ) -> None:
        self._client = client
        self._layer = layer
        self._job_id = job_id
        self._target = target
        self._interaction = interaction
        self._edit_interval = edit_interval

    async def run(self) -> None:
        throttle = Throttle(self._show_progress, self._edit_interval)
        final: JobEvent | None = None
        try:
            async for event in self._layer.follow(self._job_id):
                if isinstance(event, FINAL_EVENTS):
                    final = event
                    break
                if self._can_edit():
                    throttle.offer(event)
        finally:
            await throttle.close()
        settled = True if final is None else await self._deliver(final)
        if settled:
            await self._layer.delivered(self._job_id)

    def _can_edit(self) -> bool:
        interaction = self._interaction
        return (
            interaction is not None and datetime.now(UTC) < interaction.created_at + TOKEN_LIFETIME
        )

    async def _show_progress(self, event: JobEvent) -> None:
        if not self._can_edit():
            return
        assert self._interaction is not None
        message = await event_message(event, self._layer.image)
        try:
            await self._interaction.edit_original_response(**message.kwargs(editing=True))
        except discord.HTTPException as exc:
            log.info("job %s: progress edit failed (%s); no more edits", self._job_id, exc.status)
            self._interaction = None

    async def _deliver(self, final: JobEvent) -> bool:
        """Show the result; False when it could not be shown for now (try again at start-up)."""
        message = await event_message(final, self._layer.image)
        if self._can_edit():
            assert self._interaction is not None
            try:
                await self._interaction.edit_original_response(**message.kwargs(editing=True))
                return True
            except discord.HTTPException as exc:
                log.info("job %s: result edit failed (%s); posting it", self._job_id, exc.status)
        message = message.with_mention(self._target.user_id)
        target = self._target
        try:
            channel = self._client.get_partial_messageable(target.channel_id)
            reference = None
            if target.message_id is not None:
                reference = discord.MessageReference(
                    message_id=target.message_id,
                    channel_id=target.channel_id,
                    fail_if_not_exists=False,
                )
            await channel.send(**message.kwargs(editing=False), reference=reference)  # type: ignore[arg-type]
            return True
        except (discord.Forbidden, discord.NotFound):
            log.info(
                "job %s: channel %s refused the result; sending a DM",
                self._job_id,
                target.channel_id,
            )
        except discord.HTTPException as exc:
            log.warning(
                "job %s: posting the result failed (%s); will retry", self._job_id, exc.status
            )
            return False
        try:
            dm = await self._client.create_dm(discord.Object(target.user_id))
            await dm.send(**message.kwargs(editing=False))
        except (discord.Forbidden, discord.NotFound):
            log.warning("job %s: the user takes no DMs; the result stays in /history", self._job_id)
        except discord.HTTPException as exc:
            log.warning(
                "job %s: sending the result failed (%s); will retry", self._job_id, exc.status
            )
            return False
        return True
