"""A job's progress and result, shown in the chat its command came from.

The status message the command was answered with is edited with the job's progress (queue
position, ETA), and the "sending a photo" chat action shows while it runs; the result is sent
as a reply to the person's message, and the status message is then removed. Where to deliver is
noted with the job when it is queued and cleared once the result is out, so a restart resumes
every delivery still owed. A failure Telegram may get over (flood control, the network) is
retried with a growing delay: a result is shown at least once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any

from telegram import Bot, Message
from telegram.constants import ChatAction
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    NetworkError,
    RetryAfter,
    TelegramError,
)

from adapters.delivery import Throttle, show_until_done
from adapters.targets import IntTarget
from adapters.telegram.outgoing import MAX_TEXT, Upload, cut, keyboard, send, send_all, uploads
from adapters.telegram.posts import posts_of
from bot.commands import CommandLayer
from bot.jobs.events import FINAL_EVENTS, Completed, JobEvent, Started
from bot.log_context import bind_job

log = logging.getLogger(__name__)

PLATFORM = "telegram"
EDIT_INTERVAL = 2.0
# Progress edits across all jobs, a second: half of what Telegram takes from a bot.
PROGRESS_EDITS_PER_SECOND = 15.0
# A group allows a bot 20 messages a minute, edits and chat actions included (the rate
# limiter paces them): progress there is edited less often, and the chat action sent once.
GROUP_EDIT_SLOWER = 3
# A chat action shows for five seconds, or until the bot's next message.
CHAT_ACTION_EVERY = 4.5


class EditBudget:
    """How many progress edits may go out a second, across all jobs. Telegram takes about 30
    messages a second from a bot, and a burst of hundreds of waiting jobs would spend all of it
    on queue positions: an edit over budget is skipped (a later one shows the latest state),
    leaving the rest for answers and results."""

    def __init__(self, per_second: float) -> None:
        self._per_second = per_second
        self._rate = per_second
        self._tokens = per_second
        self._at = time.monotonic()

    def share(self, replicas: int) -> None:
        """Telegram's limit is the bot's, not a replica's: each replica edits at its share."""
        self._rate = self._per_second / max(1, replicas)

    def take(self) -> bool:
        now = time.monotonic()
        # At a share under one edit a second, still one edit at a time.
        burst = max(1.0, self._rate)
        self._tokens = min(burst, self._tokens + (now - self._at) * self._rate)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass(frozen=True)
class Target(IntTarget):
    """Where a job's result goes: the chat, the person, their message, our status message."""

    chat_id: int
    user_id: int
    reply_to: int | None = None
    status_id: int | None = None


class JobDelivery:
    def __init__(
        self,
        bot: Bot,
        layer: CommandLayer,
        job_id: str,
        target: Target,
        *,
        send_as_photo: bool,
        budget: EditBudget,
        edit_interval: float = EDIT_INTERVAL,
    ) -> None:
        self._bot = bot
        self._layer = layer
        self._job_id = job_id
        self._target = target
        self._as_photo = send_as_photo
        self._edit_interval = edit_interval
        self._status_id = target.status_id
        self._budget = budget
        self._result_posted = False

    async def run(self) -> None:
        bind_job(self._job_id, platform=PLATFORM)  # its own task: every line of it
        in_group = self._target.chat_id < 0
        interval = self._edit_interval * (GROUP_EDIT_SLOWER if in_group else 1)
        throttle = Throttle(self._show_progress, interval)
        action: asyncio.Task[None] | None = None
        final: JobEvent | None = None
        try:
            async for event in self._layer.follow(self._job_id):
                if isinstance(event, FINAL_EVENTS):
                    final = event
                    break
                if isinstance(event, Started) and action is None:
                    action = asyncio.create_task(self._show_action())
                throttle.offer(event)
        finally:
            await throttle.close()
            if action is not None:
                action.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await action
        ended = time.monotonic()
        await show_until_done(self._layer, self._job_id, final, self._deliver, self._tidy)
        self._layer.services.metrics.delivered(PLATFORM, time.monotonic() - ended)

    async def _show_action(self) -> None:
        while True:
            with contextlib.suppress(TelegramError):
                await self._bot.send_chat_action(self._target.chat_id, ChatAction.UPLOAD_PHOTO)
            if self._target.chat_id < 0:
                return
            await asyncio.sleep(CHAT_ACTION_EVERY)

    async def _show_progress(self, event: JobEvent) -> None:
        if self._status_id is None or not self._budget.take():
            return
        try:
            await self._bot.edit_message_text(
                cut(event.text, MAX_TEXT), chat_id=self._target.chat_id, message_id=self._status_id
            )
        except BadRequest as exc:
            if "not modified" not in exc.message:
                # Deleted by someone, or too old: the result will still come as its own message.
                log.info("job %s: progress edit refused (%s); no more edits", self._job_id, exc)
                self._status_id = None
        except TelegramError as exc:  # progress is a courtesy: the result is what must get through
            log.info("job %s: progress edit failed (%r)", self._job_id, exc)

    async def _deliver(self, final: JobEvent) -> bool:
        """Show the result; False when it failed in a way worth trying again."""
        target = self._target
        markup = keyboard(final.buttons)
        try:
            if isinstance(final, Completed):
                files = await uploads(
                    final.images, self._layer.image, name=self._job_id, as_photo=self._as_photo
                )
                sent, shown = await self._send_result(final.text, files, markup)
                self._result_posted = True  # the status message goes once this is recorded
                # Noted, so that deleting the job removes them from the chat as well.
                for job_id, posts in posts_of(sent, shown, job_id=self._job_id).items():
                    await self._layer.posted(job_id, posts)
            elif not await self._edit_status(final.text, markup):
                await send(
                    self._bot, target.chat_id, final.text, markup=markup, reply_to=target.reply_to
                )
            return True
        except (RetryAfter, Forbidden) as exc:
            if isinstance(exc, Forbidden):  # blocked, or removed from the group: nowhere to show it
                log.warning("job %s: %s; the result stays in /history", self._job_id, exc)
                return True
            return False
        except ChatMigrated as exc:  # the group became a supergroup, with a new id
            log.info("job %s: chat %s moved to %s", self._job_id, target.chat_id, exc.new_chat_id)
            self._target = dataclasses.replace(target, chat_id=exc.new_chat_id, reply_to=None)
            self._status_id = None
            return False
        except BadRequest as exc:
            log.warning("job %s: result refused (%s); it stays in /history", self._job_id, exc)
            return True
        except NetworkError as exc:  # includes timeouts
            log.warning("job %s: network error showing the result (%r)", self._job_id, exc)
            return False
        except Exception:  # the image store, say: the result is kept; try again later
            log.exception("job %s: showing the result failed", self._job_id)
            return False

    async def _send_result(
        self, text: str, files: list[Upload], markup: Any
    ) -> tuple[list[Message], list[Upload]]:
        """Post the result; the messages made, and the files they show."""
        target = self._target
        try:
            sent = await send_all(
                self._bot,
                target.chat_id,
                text,
                files=files,
                markup=markup,
                reply_to=target.reply_to,
            )
            return sent, files
        except BadRequest as exc:
            if not files:
                raise
            # Telegram would not take the images (say, a photo it cannot process): the text
            # still names the job, and /show has the images.
            log.warning("job %s: images refused (%s); sending the text", self._job_id, exc)
            await send(self._bot, target.chat_id, text, markup=markup, reply_to=target.reply_to)
            return [], []

    async def _edit_status(self, text: str, markup: Any) -> bool:
        if self._status_id is None:
            return False
        try:
            await self._bot.edit_message_text(
                cut(text, MAX_TEXT),
                chat_id=self._target.chat_id,
                message_id=self._status_id,
                reply_markup=markup,
            )
        except BadRequest as exc:
            log.info("job %s: could not edit the status message (%s)", self._job_id, exc)
            return False
        return True

    async def _tidy(self) -> None:
        if self._result_posted:
            await self._remove_status()

    async def _remove_status(self) -> None:
        if self._status_id is None:
            return
        try:
            await self._bot.delete_message(self._target.chat_id, self._status_id)
        except TelegramError as exc:
            log.info("job %s: status message not removed (%s)", self._job_id, exc)
