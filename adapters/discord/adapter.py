"""The Discord adapter: slash commands and button presses in, the command layer's replies and
job events out. It translates; the command layer decides.

Every interaction is acknowledged first (Discord allows 3 seconds), with only the checks that
need no I/O before it: an attachment's type and size, refused on the spot, reserving nothing.

Discord never sends an interaction again, and one acknowledged with "thinking…" stays so until
it is answered. So while one is being answered it is noted in the database (`bot.interactions`,
its token sealed); if this process dies first, another replica (or this one, restarted) ends it
once this one's lease has run out: with the job it queued, whose result then comes the way every
result does after a restart, or else with an apology.

Discord takes `max_concurrency` IDENTIFYs every 5 seconds, one per bucket (`shard_id %
max_concurrency`), counted over the whole bot, whichever replica sends them: each shard's
IDENTIFY waits for its bucket's turn across the replicas (`before_identify`). Its other global
limit, 50 requests a second, has nothing to share out beforehand: discord.py sets no rate of its
own, it waits out the global 429 Discord answers (and interaction responses are not counted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import yarl
from discord import app_commands

from adapters.delivery import keep_taking_over_deliveries, take_over_deliveries
from adapters.discord.buttons import CommandButton
from adapters.discord.delivery import (
    EDIT_INTERVAL,
    PLATFORM,
    TOKEN_LIFETIME,
    JobDelivery,
    Target,
)
from adapters.discord.localizing import Descriptions
from adapters.discord.posts import DiscordPostRemover, note_shown
from adapters.discord.registration import register
from adapters.discord.rendering import reply_message
from adapters.discord.watching import RateLimitWatch
from bot import replies
from bot.commands import Actor, CommandLayer, CommandRequest, CommandSpec
from bot.config import ConfigError, Settings
from bot.i18n import speaking
from bot.interactions import Abandoned, request_key
from bot.log_context import job_context
from bot.replies import Reply

log = logging.getLogger(__name__)

# Work that follows an acknowledgement waits while others are being sent, up to this long: in a
# burst, every interaction is acknowledged before any command runs.
ACKS_FIRST_SECONDS = 1.0
# How long a stop waits for the interactions being answered.
STOP_GRACE_SECONDS = 5.0
# Discord's window for one IDENTIFY per bucket; a turn is kept a little longer, since the
# IDENTIFY is sent, and reaches Discord, a moment after the turn is taken.
IDENTIFY_WINDOW = 5.0
IDENTIFY_MARGIN = 0.5


class HeadshotClient(discord.AutoShardedClient):
    """discord.py's client with our commands and buttons. Sharded from the start: one shard
    unless `DISCORD_SHARDS` says otherwise or Discord recommends more."""

    def __init__(
        self, adapter: DiscordAdapter, shard_count: int | None, shard_ids: list[int] | None
    ) -> None:
        # Interactions need no gateway intents: everything arrives in the interaction itself.
        super().__init__(
            intents=discord.Intents.none(),
            shard_count=shard_count,
            shard_ids=shard_ids,
            # No guild events will come (no intents): be ready as soon as the gateway is.
            guild_ready_timeout=0,
        )
        self.adapter = adapter
        self.tree = app_commands.CommandTree(self)
        register(self.tree, adapter.layer.commands.values(), adapter.run_command)

    async def setup_hook(self) -> None:
        # Discord's recommended count and identify buckets; discord.py would also take the
        # gateway address from this answer, but DISCORD_GATEWAY_URL is where we connect.
        recommended, _, limits = await self.http.get_bot_gateway()
        if self.shard_count is None:
            self.shard_count = recommended
        self.adapter.max_concurrency = limits.get("max_concurrency", 1)
        await self.adapter.hold_shards(self.shard_ids or list(range(self.shard_count)))
        self.add_dynamic_items(CommandButton)
        # Replicas starting together register the commands in turn, not all at once.
        await self.tree.set_translator(Descriptions())
        async with self.adapter.layer.one_at_a_time("discord-command-sync"):
            commands = await self.tree.sync()
        log.info("registered %d slash commands", len(commands))

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        # In place of discord.py's own pacing, which only knows this process's shards.
        await self.adapter.before_identify(shard_id or 0)

    async def run_button(self, interaction: discord.Interaction, line: str) -> None:
        await self.adapter.run_button(interaction, line)


class DiscordAdapter:
    name = "Discord"

    def __init__(
        self,
        layer: CommandLayer,
        settings: Settings,
        *,
        edit_interval: float = EDIT_INTERVAL,
        identify_window: float = IDENTIFY_WINDOW,
    ) -> None:
        if settings.discord_token is None:
            raise ConfigError("invalid setting DISCORD_TOKEN: it is not set")
        self.layer = layer
        self._settings = settings
        self._edit_interval = edit_interval
        self._identify_window = identify_window
        # How many IDENTIFY buckets there are: Discord's answer at login says.
        self.max_concurrency = 1
        self._client: HeadshotClient | None = None
        self._gateway: asyncio.Task[None] | None = None
        self._deliveries: dict[str, asyncio.Task[None]] = {}
        self._taking_over: asyncio.Task[None] | None = None
        self._ending_abandoned: asyncio.Task[None] | None = None
        # The handlers answering a "thinking…" interaction now.
        self._answering_now: set[asyncio.Task[Any]] = set()
        self._shards_held: list[str] = []
        self._remover: DiscordPostRemover | None = None
        self._acks_in_flight = 0
        self._no_acks_in_flight = asyncio.Event()
        self._no_acks_in_flight.set()
        self._metrics = layer.services.metrics
        self._rate_limits = RateLimitWatch(self._metrics)

    @property
    def client(self) -> HeadshotClient:
        if self._client is None:
            raise RuntimeError("the Discord adapter is not started")
        return self._client

    async def start(self) -> None:
        """Log in, register the commands, resume owed deliveries, connect to the gateway."""
        settings = self._settings
        assert settings.discord_token is not None
        _point_at(str(settings.discord_api_base), str(settings.discord_gateway_url))
        self._client = client = HeadshotClient(
            self, settings.discord_shards, settings.discord_shard_list
        )
        try:
            await client.login(settings.discord_token.get_secret_value())
        except BaseException as exc:
            await client.close()
            if isinstance(exc, discord.LoginFailure):
                raise ConfigError("invalid setting DISCORD_TOKEN: Discord refused it") from None
            raise
        self._rate_limits.install()
        if self.layer.services.readiness is not None:
            self.layer.services.readiness.gateway("discord", self._connected)
        # Deleting a job deletes its messages, whichever replica posted them.
        self._remover = DiscordPostRemover(client)
        self.layer.remove_posts_with(PLATFORM, self._remover)
        await take_over_deliveries(self.layer, PLATFORM, Target.from_json, self._follow_later)
        self._taking_over = asyncio.create_task(
            keep_taking_over_deliveries(self.layer, PLATFORM, Target.from_json, self._follow_later),
            name="discord-take-over",
        )
        await self._end_abandoned()
        self._ending_abandoned = asyncio.create_task(
            self._keep_ending_abandoned(), name="discord-abandoned-interactions"
        )
        self._gateway = asyncio.create_task(client.connect(), name="discord-gateway")
        self._gateway.add_done_callback(_log_gateway_end)

    async def hold_shards(self, shards: list[int]) -> None:
        """Take the shards this replica is to run, each by its own lock: a shard that runs on
        another replica refuses this one's start (Discord would have both sessions fight)."""
        for shard in shards:
            work = f"discord-shard-{shard}"
            if not await self.layer.hold(work):
                await self._let_shards_go()
                raise ConfigError(
                    f"invalid setting DISCORD_SHARD_IDS: shard {shard} already runs on another "
                    "replica: give each replica its own shards (DISCORD_SHARD_IDS of "
                    "DISCORD_SHARDS)"
                )
            self._shards_held.append(work)

    async def before_identify(self, shard_id: int) -> None:
        """Until the shard may IDENTIFY: its bucket's turn, taken across every replica and kept
        for Discord's window, so no two IDENTIFYs of one bucket are closer than that."""
        bucket = shard_id % self.max_concurrency
        await self.layer.take_turn(
            f"discord-identify-{bucket}", keep_for=self._identify_window + IDENTIFY_MARGIN
        )

    async def _let_shards_go(self) -> None:
        while self._shards_held:
            await self.layer.let_go(self._shards_held.pop())

    def _connected(self) -> bool:
        """Every shard this replica runs is connected (for `/readyz`)."""
        client = self._client
        if client is None or client.is_closed() or not client.is_ready():
            return False
        return not any(shard.is_closed() for shard in client.shards.values())

    async def wait_ready(self) -> None:
        """Until every shard is connected and ready for interactions."""
        await self.client.wait_until_ready()

    async def stop(self) -> None:
        """Stop following jobs (what is owed stays noted for the next start) and disconnect.
        Interactions being answered get a few seconds; those still unanswered then are let
        go, for another process to end at once."""
        if self.layer.services.readiness is not None:
            self.layer.services.readiness.drop_gateway("discord")
        self._rate_limits.remove()
        if self._answering_now:
            await asyncio.wait(list(self._answering_now), timeout=STOP_GRACE_SECONDS)
        if self._remover is not None:
            self.layer.stop_removing_posts(PLATFORM, self._remover)
            self._remover = None
        loops = [self._taking_over, self._ending_abandoned]
        tasks = [
            *self._answering_now,
            *self._deliveries.values(),
            *(task for task in loops if task is not None),
        ]
        self._taking_over = self._ending_abandoned = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.close()
        if self._gateway is not None:
            await asyncio.gather(self._gateway, return_exceptions=True)
        try:
            await self.layer.interactions.release()
        except Exception:
            log.exception("letting go of interactions being answered failed: their leases run out")
        await self._let_shards_go()

    # ---- interactions -----------------------------------------------------------------------

    async def run_command(
        self, spec: CommandSpec, interaction: discord.Interaction, given: dict[str, Any]
    ) -> None:
        arrived = self._received()
        actor = _actor(interaction)

        def refusal() -> Reply | None:
            """An attachment refused from what Discord says of it, before anything is read."""
            for name, value in given.items():
                if isinstance(value, discord.Attachment):
                    refused = self.layer.check_upload(
                        value.content_type,
                        value.size,
                        interaction.filesize_limit,
                        subject="pose image" if name == "pose_image" else "selfie",
                    )
                    if refused is not None:
                        return refused
            return None

        if refusal() is not None:  # rare: worded in the person's language, read first
            async with self.layer.answering(actor), self._acknowledging(arrived):
                refused = refusal()
                assert refused is not None
                await interaction.response.send_message(refused.text, ephemeral=True)
            return
        async with self._acknowledging(arrived):
            deferred = await interaction.response.defer(thinking=True, ephemeral=spec.private)
        await self._after_acknowledgements()
        key = request_key(PLATFORM, interaction.id)
        async with (
            self.layer.answering(actor),
            self._answering(interaction),
            self._noted(interaction, deferred),
        ):
            options: dict[str, Any] = {}
            for name, value in given.items():
                if value is None:
                    continue
                try:
                    options[name] = await _option_value(value)
                except (discord.HTTPException, aiohttp.ClientError, OSError):
                    log.warning("could not download attachment %s", name, exc_info=True)
                    reply = replies.refused(replies.upload_unreadable())
                    await self._answer(interaction, reply, private=spec.private)
                    return
            target = Target.of(interaction, deferred.message_id if deferred else None)
            request = CommandRequest(actor, spec.name, options, target.to_json(), request_key=key)
            reply = await self.layer.handle(request)
            await self._answer(interaction, reply, private=spec.private, target=target)

    async def run_button(self, interaction: discord.Interaction, line: str) -> None:
        arrived = self._received()
        spec = self.layer.command_of_line(line)
        # A reply takes the pressed message's place only on the presser's own message: a
        # stranger's press is answered to them alone.
        in_place = spec is not None and spec.replaces_message and _pressers_own(interaction)
        private = spec is None or spec.private
        async with self._acknowledging(arrived):
            if in_place:
                deferred = await interaction.response.defer()
            else:
                deferred = await interaction.response.defer(thinking=True, ephemeral=private)
        await self._after_acknowledgements()
        # A press answered in place shows no "thinking…": nothing to end if this process dies.
        noted = contextlib.nullcontext() if in_place else self._noted(interaction, deferred)
        pressed = interaction.message.id if in_place and interaction.message else None
        actor = _actor(interaction)
        async with self.layer.answering(actor), self._answering(interaction), noted:
            message_id = None if in_place or deferred is None else deferred.message_id
            target = Target.of(interaction, message_id)
            with self._replacing(pressed):
                reply = await self.layer.run_line(
                    actor,
                    line,
                    deliver_to=target.to_json(),
                    request_key=request_key(PLATFORM, interaction.id),
                )
            await self._answer(
                interaction, reply, private=private, in_place=in_place, target=target
            )

    def _received(self) -> float:
        """Count an interaction in; returns when it arrived, for its acknowledgement's time."""
        self._metrics.received(PLATFORM)
        return time.monotonic()

    @contextlib.asynccontextmanager
    async def _acknowledging(self, arrived: float) -> AsyncIterator[None]:
        self._acks_in_flight += 1
        self._no_acks_in_flight.clear()
        try:
            yield
            self._metrics.acknowledged(PLATFORM, time.monotonic() - arrived)
        finally:
            self._acks_in_flight -= 1
            if self._acks_in_flight == 0:
                self._no_acks_in_flight.set()

    async def _after_acknowledgements(self) -> None:
        """Let the acknowledgements in flight go first: each has 3 s, the commands have not."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(ACKS_FIRST_SECONDS):
                await self._no_acks_in_flight.wait()

    @contextlib.asynccontextmanager
    async def _noted(
        self,
        interaction: discord.Interaction,
        deferred: discord.InteractionCallbackResponse[Any] | None,
    ) -> AsyncIterator[None]:
        """While a "thinking…" interaction is being answered, it is noted in the database: if
        this process dies before the end of the block, another one ends it."""
        key = await self.layer.interactions.deferred(
            PLATFORM,
            interaction.id,
            person=str(interaction.user.id),
            application_id=interaction.application_id,
            message_id=deferred.message_id if deferred is not None else None,
            token=interaction.token,
            expires_at=interaction.created_at + TOKEN_LIFETIME,
        )
        handler = asyncio.current_task()
        assert handler is not None  # discord.py runs each interaction's handler in a task
        self._answering_now.add(handler)
        try:
            yield
        except Exception:
            await self._answered(key)
            raise
        finally:
            self._answering_now.discard(handler)
        await self._answered(key)

    async def _answered(self, key: str) -> None:
        try:
            await self.layer.interactions.answered(key)
        except Exception:  # answered all the same: tell nobody, the note goes with its token
            log.exception("interaction %s: its note could not be deleted", key)

    async def _keep_ending_abandoned(self) -> None:
        interactions = self.layer.interactions
        while True:
            await asyncio.sleep(interactions.check_interval)
            try:
                await interactions.renew()
                await self._end_abandoned()
            except Exception:
                log.exception("ending abandoned interactions failed; trying again shortly")

    async def _end_abandoned(self) -> None:
        """End the interactions a process that died left "thinking…"."""
        for abandoned in await self.layer.interactions.abandoned(PLATFORM):
            if await self._end(abandoned):
                await self._answered(abandoned.key)
            else:
                await self.layer.interactions.retry_later(abandoned.key)

    async def _end(self, abandoned: Abandoned) -> bool:
        """Replace the "thinking…" with where the request stands; False if Discord may take it
        later (a 5xx, a 429, the network)."""
        # The note keeps no language: the operator's default (the result itself, owed, is
        # shown in its asker's).
        with speaking(self.layer.noted_language(None)):
            if abandoned.job_id is None:
                text = replies.request_lost()
            else:  # its result is owed, and shown like any result after a restart
                text = replies.request_resumed(abandoned.job_id)
        webhook = discord.Webhook.partial(
            abandoned.application_id, abandoned.token, client=self.client
        )
        try:
            if abandoned.message_id is None:
                await webhook.send(text)  # Discord's first follow-up replaces the "thinking…"
            else:
                await webhook.edit_message(abandoned.message_id, content=text)
            self._metrics.sent(PLATFORM)
        except discord.HTTPException as exc:
            if exc.status == 429 or exc.status >= 500:
                return False
            # The token ran out, or the message went: there is nothing left to end.
            log.info("interaction %s could not be ended (%s)", abandoned.key, exc.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("interaction %s: network error ending it (%r)", abandoned.key, exc)
            return False
        else:
            log.info("interaction %s, left by a process that stopped, is ended", abandoned.key)
        return True

    @contextlib.asynccontextmanager
    async def _answering(self, interaction: discord.Interaction) -> AsyncIterator[None]:
        """After the acknowledgement: whatever goes wrong, the person is told, not left with
        "…is thinking" until Discord gives up."""
        try:
            yield
        except Exception:
            reference = secrets.token_hex(4)
            log.exception("interaction %s failed (ref %s)", interaction.id, reference)
            with contextlib.suppress(Exception):
                await interaction.followup.send(replies.internal_error(reference), ephemeral=True)
                self._metrics.sent(PLATFORM)

    async def _answer(
        self,
        interaction: discord.Interaction,
        reply: Reply,
        *,
        private: bool,
        in_place: bool = False,
        target: Target | None = None,
    ) -> None:
        """Put the reply where the deferral left a place for it, unless that place is visible
        to others and the reply is for the asker only: then it goes to the asker alone."""
        message = await reply_message(reply, self.layer.image, interaction.filesize_limit)
        here = not reply.refused if in_place else (private or not reply.private)
        if not here:
            if not in_place:
                await interaction.delete_original_response()
            await interaction.followup.send(**message.kwargs(editing=False), ephemeral=True)
            self._metrics.sent(PLATFORM)
            return
        if reply.job_id is None:
            shown = await interaction.edit_original_response(**message.kwargs(editing=True))
            self._metrics.sent(PLATFORM)
            if message.pictures:  # images shown again, in a message others see
                jobs = [image.job_id for image in reply.images if image.job_id is not None]
                await note_shown(self.layer, shown, jobs)
            return
        assert target is not None, "a command that queues a job is given a target"
        try:
            await interaction.edit_original_response(**message.kwargs(editing=True))
            self._metrics.sent(PLATFORM)
        except discord.HTTPException:
            # The job is queued all the same: its result will be posted in the channel.
            with job_context(reply.job_id, platform=PLATFORM):
                log.warning(
                    "job %s: could not show that it was queued", reply.job_id, exc_info=True
                )
            self._follow(reply.job_id, target, None)
            return
        self._follow(reply.job_id, target, interaction)

    def _replacing(self, message_id: int | None) -> contextlib.AbstractContextManager[None]:
        """While a press's answer is to take the pressed message's place: a job deleted by it
        leaves that message to the answer."""
        if self._remover is None:
            return contextlib.nullcontext()
        return self._remover.replacing(message_id)

    def _follow_later(self, job_id: str, target: Target) -> None:
        """Follow a result owed from before (no interaction: it is posted in the channel)."""
        self._follow(job_id, target, None)

    def _follow(self, job_id: str, target: Target, interaction: discord.Interaction | None) -> None:
        if job_id in self._deliveries:
            return  # followed here already (its lease ran out while this process stalled)
        delivery = JobDelivery(
            self.client,
            self.layer,
            job_id,
            target,
            interaction,
            edit_interval=self._edit_interval,
        )
        task = asyncio.create_task(delivery.run(), name=f"discord-delivery-{job_id}")
        self._deliveries[job_id] = task
        task.add_done_callback(lambda done: self._delivery_done(job_id, done))

    def _delivery_done(self, job_id: str, task: asyncio.Task[None]) -> None:
        if self._deliveries.get(job_id) is task:
            del self._deliveries[job_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())


def _pressers_own(interaction: discord.Interaction) -> bool:
    """Whether the pressed message is only the presser's: ephemeral, made by their own command,
    or a result posted for them (it mentions them)."""
    message = interaction.message
    if message is None:
        return False
    if message.flags.ephemeral:
        return True
    metadata = message.interaction_metadata
    if metadata is not None:
        return metadata.user.id == interaction.user.id
    return [user.id for user in message.mentions] == [interaction.user.id]


def _actor(interaction: discord.Interaction) -> Actor:
    guild_id = interaction.guild_id
    permissions = interaction.permissions
    return Actor(
        platform=PLATFORM,
        user_id=str(interaction.user.id),
        community_id=str(guild_id) if guild_id is not None else None,
        # What the server says now, whatever it let the member see: checked on every run.
        is_moderator=guild_id is not None
        and (permissions.manage_guild or permissions.administrator),
        locale=interaction.locale.value,
    )


async def _option_value(value: Any) -> Any:
    """An option as the command layer takes it: bytes for a file, an id for a person."""
    if isinstance(value, discord.Attachment):
        return await value.read()
    if isinstance(value, discord.Role):
        # @everyone is the server's default role; any other role is not a person.
        return "everyone" if value.is_default() else value.mention
    if isinstance(value, discord.abc.User):
        return str(value.id)
    return value


def _point_at(api_base: str, gateway_url: str) -> None:
    # discord.py reads both addresses from class attributes, not from the client: set them
    # before the client makes its first request (one Discord per process).
    discord.http.Route.BASE = api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


def _log_gateway_end(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the Discord gateway connection ended", exc_info=task.exception())
