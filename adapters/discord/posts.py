"""The bot's Discord messages that show a job's images: noting them, and deleting them when the
job goes. A bot may delete its own messages at any age, wherever it still has access."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

import aiohttp
import discord

from bot.commands import CommandLayer
from bot.posts import Post, Removal

log = logging.getLogger(__name__)

PLATFORM = "discord"
MESSAGE = "message"


async def note_shown(layer: CommandLayer, message: discord.Message, job_ids: Sequence[str]) -> None:
    """Note a message that shows these jobs' images (an ephemeral one is the person's alone,
    and goes by itself)."""
    if message.flags.ephemeral:
        return
    channel_id = getattr(message.channel, "id", None)
    if channel_id is None:  # not expected: discord.py gives every message its channel
        log.warning("message %s: no channel known; not noted with its job", message.id)
        return
    post = Post(PLATFORM, str(channel_id), str(message.id), MESSAGE)
    for job_id in dict.fromkeys(job_ids):
        await layer.posted(job_id, [post])


class DiscordPostRemover:
    """Deletes the bot's messages through the REST API (no gateway needed)."""

    def __init__(self, client: discord.Client) -> None:
        self._client = client
        # Messages a button press is replacing in place right now: the answer takes their place
        # (and their images' place), so they are not deleted under it.
        self._replacing: set[str] = set()

    @contextlib.contextmanager
    def replacing(self, message_id: int | None) -> Iterator[None]:
        if message_id is None:
            yield
            return
        self._replacing.add(str(message_id))
        try:
            yield
        finally:
            self._replacing.discard(str(message_id))

    async def remove(self, post: Post) -> Removal:
        if post.message in self._replacing:
            return Removal(removed=1)
        channel = self._client.get_partial_messageable(int(post.chat))
        try:
            await channel.get_partial_message(int(post.message)).delete()
        except discord.NotFound:  # gone already, or its channel is
            return Removal(removed=1)
        except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("message %s in channel %s not deleted (%r)", post.message, post.chat, exc)
            return Removal(left=1)
        return Removal(removed=1)
