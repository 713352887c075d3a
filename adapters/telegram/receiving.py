"""Telegram's updates in: each one noted in the inbox before Telegram hears that we have it.

Telegram sends an update until it is acknowledged (a webhook answered 200, or a later
getUpdates offset past it), then never again: an update acknowledged and then lost in a crash
would be lost for good. So an update is acknowledged only once it is in the inbox (`bot.inbox`,
in the database), handled, then deleted from it. If the process handling it dies, another
replica takes it over when its lease runs out (or this one, at its next start) and handles it
again; the update's request key makes a job it queued come out once. An update delivered again
while it is in the inbox changes nothing; delivered again after it was handled (Telegram missed
our 200), it is handled again, and its job is still the one job.

We chose this over answering Telegram only once an update is handled: handling one may take
seconds (a selfie downloaded and checked), Telegram sends a chat's updates one at a time, and a
slow or failing handler would hold every update behind it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from telegram import Update
from telegram.ext import Application

from adapters.telegram.delivery import PLATFORM
from adapters.telegram.incoming import sender_of
from bot.commands import CommandLayer
from bot.inbox import request_key

log = logging.getLogger(__name__)

# Updates handled at once.
CONCURRENT_UPDATES = 256
# How long a stop waits for the updates being handled.
STOP_GRACE_SECONDS = 5.0
POLL_RETRY_FIRST_SECONDS = 1.0
POLL_RETRY_MAX_SECONDS = 30.0


# Tells the sender of an update that was dropped (see `bot.inbox`) that it failed.
DroppedListener = Callable[[Update], Awaitable[None]]


class Receiver:
    def __init__(
        self,
        application: Application[Any, Any, Any, Any, Any, Any],
        layer: CommandLayer,
        on_dropped: DroppedListener,
    ) -> None:
        self._application = application
        self._layer = layer
        self._on_dropped = on_dropped
        self._bot = str(application.bot.id)
        self._turns = asyncio.Semaphore(CONCURRENT_UPDATES)
        self._handling: dict[str, asyncio.Task[None]] = {}
        # Handled, but deleting them from the inbox failed (the database was away).
        self._unfinished: set[str] = set()
        self._keeper: asyncio.Task[None] | None = None

    def key(self, update: Update) -> str:
        """The update's request key: a job it queues is queued once, however often it is
        handled."""
        return request_key(PLATFORM, self._bot, update.update_id)

    async def start(self) -> None:
        """Handle what the last run (or a dead replica) left in the inbox, and keep doing so."""
        await self._take_over()
        self._keeper = asyncio.create_task(self._keep(), name="telegram-inbox")

    async def take(self, update: Update, payload: dict[str, Any] | None = None) -> None:
        """Note an update (as Telegram sent it: `payload`) in the inbox, then handle it in the
        background. Raises if it could not be noted: then it must not be acknowledged."""
        metrics = self._layer.services.metrics
        metrics.received(PLATFORM)
        arrived = time.monotonic()
        key = await self._layer.inbox.accept(
            PLATFORM,
            self._bot,
            update.update_id,
            person=_person(update),
            payload=update.to_dict() if payload is None else payload,
        )
        metrics.acknowledged(PLATFORM, time.monotonic() - arrived)
        if key is not None:
            self._handle_later(key, update)

    async def poll(self, poll_seconds: int, allowed_updates: list[str]) -> None:
        """Long-poll Telegram for updates. Asking for the next ones acknowledges the last: that
        happens only once they are in the inbox."""
        bot = self._application.bot
        offset = 0
        delay = POLL_RETRY_FIRST_SECONDS
        webhook_deleted = False
        while True:
            try:
                if not webhook_deleted:  # Telegram answers no getUpdates while one is set
                    webhook_deleted = await bot.delete_webhook()
                updates = await bot.get_updates(
                    offset=offset, timeout=poll_seconds, allowed_updates=allowed_updates
                )
                for update in updates:
                    await self.take(update)
                    offset = update.update_id + 1
                delay = POLL_RETRY_FIRST_SECONDS
            except Exception as exc:
                log.warning("polling Telegram failed (%r); again in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, POLL_RETRY_MAX_SECONDS)

    async def stop(self) -> None:
        """Stop handling, giving the updates being handled a few seconds to end; those still
        unhandled then are let go, for the next start or another replica to handle at once."""
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
            self._keeper = None
        if self._handling:
            await asyncio.wait(list(self._handling.values()), timeout=STOP_GRACE_SECONDS)
        tasks = list(self._handling.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self._layer.inbox.release()
        except Exception:
            log.exception("letting go of unhandled updates failed: their leases run out instead")

    def _handle_later(self, key: str, update: Update) -> None:
        if key in self._handling:
            return  # handled here already (its lease ran out while this process stalled)
        task = asyncio.create_task(self._handle(key, update), name=f"telegram-update-{key}")
        self._handling[key] = task
        task.add_done_callback(lambda _: self._handling.pop(key, None))

    async def _handle(self, key: str, update: Update) -> None:
        async with self._turns:
            try:
                # Handlers' own errors go to the application's error handler, not here.
                await self._application.process_update(update)
            except Exception:
                log.exception("update %s could not be handled; it is dropped", key)
            await self._done(key)

    async def _done(self, key: str) -> None:
        try:
            await self._layer.inbox.done(key)
        except Exception:
            # Its lease is renewed while this process runs: no one else would ever delete it.
            log.exception("update %s is handled but still in the inbox; retrying", key)
            self._unfinished.add(key)
        else:
            self._unfinished.discard(key)

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(self._layer.inbox.check_interval)
            try:
                for key in list(self._unfinished):
                    await self._done(key)
                await self._layer.inbox.renew()
                await self._take_over()
            except Exception:
                log.exception("keeping the Telegram inbox failed; trying again shortly")

    async def _take_over(self) -> None:
        items, dropped = await self._layer.inbox.take_over(PLATFORM, self._bot)
        for item in dropped:
            if item.job_queued:
                continue  # its job answers
            update = Update.de_json(item.payload, self._application.bot)
            if update is not None:
                try:
                    await self._on_dropped(update)
                except Exception:
                    log.exception("telling the sender of dropped update %s failed", item.key)
        for item in items:
            update = Update.de_json(item.payload, self._application.bot)
            if update is None:
                await self._layer.inbox.done(item.key)
                continue
            log.info("update %s: handling it again (attempt %d)", item.key, item.attempts)
            self._handle_later(item.key, update)


def _person(update: Update) -> str | None:
    """Who sent the update, as the command layer knows people (for `forget`)."""
    if update.message is not None:
        sender = sender_of(update.message)
        return None if sender is None else str(sender.id)
    if update.callback_query is not None:
        return str(update.callback_query.from_user.id)
    return None
