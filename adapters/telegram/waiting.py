"""What the bot is waiting for from someone: the photo after a bare `/headshot`, or the style
picked on a keyboard. Each wait ends after a while (then `on_expiry` tells the person).

Kept in memory only, and only Telegram's file ids, never the photo: a restart forgets the
waits, and a press on a forgotten keyboard is answered as expired.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileRef:
    """A file on Telegram's servers, as a message describes it."""

    file_id: str
    # "photo", "document", or what else it is ("sticker", "video", …: not a selfie).
    kind: str
    size: int | None = None
    content_type: str | None = None

    @property
    def is_image_message(self) -> bool:
        return self.kind in ("photo", "document")


@dataclass(frozen=True)
class Request:
    """A command waiting for what it lacks, with what is needed to run it later."""

    line: str
    chat_id: int
    # Whose it is: the Telegram user, or the group itself for an anonymous admin.
    sender_id: int
    # The person's message that the answers reply to.
    reply_to: int | None
    selfie: FileRef | None = None


@dataclass
class Wait:
    request: Request
    # The bot's message that asked (edited when the wait ends).
    prompt_id: int
    # Waiting for a photo (else for a style).
    for_photo: bool
    timer: asyncio.TimerHandle | None = None


Expiry = Callable[[Wait], Awaitable[None]]


class Waits:
    """Requests waiting for a photo (by chat and sender) or a style (by a random token)."""

    def __init__(self, seconds: float, on_expiry: Expiry) -> None:
        self._seconds = seconds
        self._on_expiry = on_expiry
        self._for_photo: dict[tuple[int, int], Wait] = {}
        self._for_style: dict[str, Wait] = {}
        self._expiring: set[asyncio.Task[None]] = set()

    def await_photo(self, request: Request, prompt_id: int) -> None:
        key = (request.chat_id, request.sender_id)
        self._drop(self._for_photo.pop(key, None))
        wait = Wait(request, prompt_id, for_photo=True)
        self._for_photo[key] = wait
        wait.timer = self._expire_later(lambda: self._for_photo.pop(key, None))

    def photo_awaited(self, chat_id: int, sender_id: int) -> Request | None:
        wait = self._for_photo.get((chat_id, sender_id))
        return None if wait is None else wait.request

    def take_photo_wait(self, chat_id: int, sender_id: int) -> Wait | None:
        wait = self._for_photo.pop((chat_id, sender_id), None)
        self._drop(wait)
        return wait

    def await_style(self, token: str, request: Request, prompt_id: int) -> None:
        """Wait for a style to be picked on the keyboard of message `prompt_id`, whose buttons
        carry `token` (see `new_token`)."""
        wait = Wait(request, prompt_id, for_photo=False)
        self._for_style[token] = wait
        wait.timer = self._expire_later(lambda: self._for_style.pop(token, None))

    @staticmethod
    def new_token() -> str:
        """Unguessable, and short enough for Telegram's 64 bytes of button data."""
        return secrets.token_hex(6)

    def style_wait(self, token: str) -> Wait | None:
        return self._for_style.get(token)

    def take_style_wait(self, token: str) -> Wait | None:
        wait = self._for_style.pop(token, None)
        self._drop(wait)
        return wait

    def cancel(self, chat_id: int, sender_id: int) -> list[Wait]:
        """End everything this person is being waited on for in this chat."""
        ended = [w for w in [self.take_photo_wait(chat_id, sender_id)] if w is not None]
        for token, wait in list(self._for_style.items()):
            if (wait.request.chat_id, wait.request.sender_id) == (chat_id, sender_id):
                ended.append(wait)
                self.take_style_wait(token)
        return ended

    async def close(self) -> None:
        for wait in [*self._for_photo.values(), *self._for_style.values()]:
            self._drop(wait)
        self._for_photo.clear()
        self._for_style.clear()
        for task in list(self._expiring):
            task.cancel()
        await asyncio.gather(*self._expiring, return_exceptions=True)

    def _expire_later(self, take: Callable[[], Wait | None]) -> asyncio.TimerHandle:
        loop = asyncio.get_running_loop()
        return loop.call_later(self._seconds, self._expire, take)

    def _expire(self, take: Callable[[], Wait | None]) -> None:
        wait = take()
        if wait is None:
            return
        task = asyncio.create_task(self._on_expiry(wait))
        self._expiring.add(task)
        task.add_done_callback(self._expired)

    def _expired(self, task: asyncio.Task[None]) -> None:
        self._expiring.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("telling of an ended wait failed", exc_info=task.exception())

    @staticmethod
    def _drop(wait: Wait | None) -> None:
        if wait is not None and wait.timer is not None:
            wait.timer.cancel()
