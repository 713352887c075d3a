"""A job's progress and result, shown where its command was run.

While the interaction's token is valid (15 minutes), progress edits the command's own message
and the result takes its place. After that, or after a restart (a delivery keeps no token),
the result is posted in the channel as a reply that mentions the user, or sent to them directly
if the channel will not take it. Where to deliver is noted with the job when it is queued and
cleared once the result is out; a failure Discord may get over (a 5xx, a 429, the network) is
retried with a growing delay, so a result is shown at least once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import aiohttp
import discord

from adapters.delivery import Throttle, show_until_done
from adapters.discord.posts import note_shown
from adapters.discord.rendering import DEFAULT_UPLOAD_LIMIT, Outgoing, event_message
from adapters.targets import IntTarget
from bot.commands import CommandLayer
from bot.jobs.events import FINAL_EVENTS, JobEvent
from bot.log_context import bind_job

log = logging.getLogger(__name__)

PLATFORM = "discord"
# Discord accepts edits through an interaction's token for 15 minutes; stop a little before.
TOKEN_LIFETIME = timedelta(minutes=15) - timedelta(seconds=30)
# Progress edits are coalesced (`Throttle`): at most one per interval, always the latest state.
EDIT_INTERVAL = 2.0


@dataclass(frozen=True)
class Target(IntTarget):
    """Where a result goes when the interaction can no longer be used (no token in here)."""

    channel_id: int
    user_id: int
    message_id: int | None = None
    guild_id: int | None = None
    upload_limit: int = DEFAULT_UPLOAD_LIMIT

    @classmethod
    def of(cls, interaction: discord.Interaction, message_id: int | None) -> Target:
        if interaction.channel_id is None:
            raise ValueError("an interaction without a channel")
        return cls(
            interaction.channel_id,
            interaction.user.id,
            message_id,
            interaction.guild_id,
            interaction.filesize_limit,
        )


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
        bind_job(self._job_id, platform=PLATFORM)  # its own task: every line of it
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
        ended = time.monotonic()
        await show_until_done(self._layer, self._job_id, final, self._deliver)
        self._layer.services.metrics.delivered(PLATFORM, time.monotonic() - ended)

    def _can_edit(self) -> bool:
        interaction = self._interaction
        return (
            interaction is not None and datetime.now(UTC) < interaction.created_at + TOKEN_LIFETIME
        )

    async def _show_progress(self, event: JobEvent) -> None:
        if not self._can_edit():
            return
        assert self._interaction is not None
        message = await event_message(event, self._layer.image, self._target.upload_limit)
        try:
            await self._interaction.edit_original_response(**message.kwargs(editing=True))
            self._layer.services.metrics.sent(PLATFORM)
        except Exception as exc:  # progress is a courtesy: the result is what must get through
            log.info("job %s: progress edit failed (%r); no more edits", self._job_id, exc)
            self._interaction = None

    async def _deliver(self, final: JobEvent) -> bool:
        """Show the result; False when it failed in a way worth trying again."""
        message = await event_message(final, self._layer.image, self._target.upload_limit)
        if self._can_edit():
            assert self._interaction is not None
            try:
                shown = await self._interaction.edit_original_response(
                    **message.kwargs(editing=True)
                )
            except Exception as exc:
                log.info("job %s: result edit failed (%r); posting it", self._job_id, exc)
                self._interaction = None
            else:
                self._layer.services.metrics.sent(PLATFORM)
                if message.pictures:
                    await note_shown(self._layer, shown, [self._job_id])
                return True
        message = message.with_mention(self._target.user_id)
        # The channel, as a reply to the command's message; failing that, the user's DMs.
        for destination, reference in ((self._channel, self._reference()), (self._dm, None)):
            try:
                sent = await self._send(destination, reference, message)
                if sent is not None:
                    await note_shown(self._layer, sent, [self._job_id])
                return True
            except (discord.Forbidden, discord.NotFound) as exc:
                log.info("job %s: %s refused the result (%s)", self._job_id, destination, exc)
            except discord.HTTPException as exc:
                if exc.status == 429 or exc.status >= 500:
                    return False
                log.warning("job %s: result refused (%s)", self._job_id, exc)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("job %s: network error posting the result (%r)", self._job_id, exc)
                return False
        log.warning("job %s: nowhere to show the result; it stays in /history", self._job_id)
        return True

    async def _send(
        self,
        destination: Callable[[], Awaitable[discord.abc.Messageable]],
        reference: discord.MessageReference | None,
        message: Outgoing,
    ) -> discord.Message | None:
        """Send, and if Discord refuses the files (too large, say), the message without them.
        The message sent if it shows images."""
        channel = await destination()
        try:
            sent = await channel.send(**message.kwargs(editing=False), reference=reference)  # type: ignore[arg-type]
        except discord.HTTPException as exc:
            if not message.pictures or exc.status not in (400, 413):
                raise
            log.warning("job %s: files refused (%s); sending the text", self._job_id, exc)
            await channel.send(**message.without_files().kwargs(editing=False), reference=reference)  # type: ignore[arg-type]
            self._layer.services.metrics.sent(PLATFORM)
            return None
        self._layer.services.metrics.sent(PLATFORM)
        return sent if message.pictures else None

    async def _channel(self) -> discord.abc.Messageable:
        return self._client.get_partial_messageable(self._target.channel_id)

    async def _dm(self) -> discord.abc.Messageable:
        return await self._client.create_dm(discord.Object(self._target.user_id))

    def _reference(self) -> discord.MessageReference | None:
        target = self._target
        if target.message_id is None:
            return None
        return discord.MessageReference(
            message_id=target.message_id, channel_id=target.channel_id, fail_if_not_exists=False
        )
