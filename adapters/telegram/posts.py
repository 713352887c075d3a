"""The bot's Telegram messages that show a job's images: noting them, and removing them when
the job goes.

Telegram lets a bot delete its messages for 48 hours only. An older one is edited instead: each
image (each album item on its own) becomes a plain grey placeholder of ours, and a text the
placeholder's caption; the reply to the command says so.
"""

from __future__ import annotations

import functools
import io
import logging
from collections.abc import Sequence

from PIL import Image
from telegram import Bot, InputMediaDocument, InputMediaPhoto, Message
from telegram.error import BadRequest, TelegramError

from adapters.telegram.outgoing import Upload
from bot import replies
from bot.posts import Post, Removal

log = logging.getLogger(__name__)

PLATFORM = "telegram"
PHOTO, DOCUMENT, TEXT = "photo", "document", "text"
PLACEHOLDER_SIDE = 320
PLACEHOLDER_GREY = (160, 160, 160)
PLACEHOLDER_NAME = "deleted.png"


def posts_of(
    messages: Sequence[Message], files: Sequence[Upload], *, job_id: str | None = None
) -> dict[str, list[Post]]:
    """The messages `send_all` made, by the job whose images they show: the message of each
    file for that file's job (all for `job_id` when given), and a text of its own for every job
    shown with it. Messages showing no job's image are left out."""
    by_job: dict[str, list[Post]] = {}
    jobs = [job_id or file.job_id for file in files]
    for index, message in enumerate(messages):
        shown = jobs[index : index + 1] if index < len(jobs) else jobs
        post = Post(PLATFORM, str(message.chat_id), str(message.message_id), kind_of(message))
        for job in dict.fromkeys(shown):
            if job is not None:
                by_job.setdefault(job, []).append(post)
    return by_job


def kind_of(message: Message) -> str:
    if message.photo:
        return PHOTO
    if message.document:
        return DOCUMENT
    return TEXT


class TelegramPostRemover:
    """Removes the bot's messages, as far as Telegram allows: deleted within 48 hours, edited
    into a placeholder after."""

    def __init__(self, bot: Bot) -> None:
        self._bot = bot

    async def remove(self, post: Post) -> Removal:
        chat_id, message_id = int(post.chat), int(post.message)
        try:
            await self._bot.delete_message(chat_id, message_id)
            return Removal(removed=1)
        except BadRequest as exc:
            if "not found" in exc.message:  # deleted already, by someone or with another job
                return Removal(removed=1)
            if "can't be deleted" not in exc.message:
                log.info("message %s in chat %s not removed (%s)", message_id, chat_id, exc)
                return Removal(left=1)
        except TelegramError as exc:
            log.info("message %s in chat %s not removed (%s)", message_id, chat_id, exc)
            return Removal(left=1)
        return await self._replace(post, chat_id, message_id)

    async def _replace(self, post: Post, chat_id: int, message_id: int) -> Removal:
        """Telegram would not delete it (too old): the image, or the text, is replaced."""
        try:
            if post.kind == TEXT:
                await self._bot.edit_message_text(
                    replies.post_removed(), chat_id=chat_id, message_id=message_id
                )
            else:
                await self._bot.edit_message_media(
                    placeholder_media(post.kind), chat_id=chat_id, message_id=message_id
                )
        except BadRequest as exc:
            if "not modified" in exc.message:  # replaced already
                return Removal(replaced=1)
            log.info("message %s in chat %s not replaced (%s)", message_id, chat_id, exc)
            return Removal(left=1)
        except TelegramError as exc:
            log.info("message %s in chat %s not replaced (%s)", message_id, chat_id, exc)
            return Removal(left=1)
        return Removal(replaced=1)


def placeholder_media(kind: str) -> InputMediaPhoto | InputMediaDocument:
    """The placeholder as the kind of media the message shows (an album keeps its kind)."""
    caption = replies.post_removed()
    if kind == DOCUMENT:
        return InputMediaDocument(placeholder(), caption=caption, filename=PLACEHOLDER_NAME)
    return InputMediaPhoto(placeholder(), caption=caption, filename=PLACEHOLDER_NAME)


@functools.cache
def placeholder() -> bytes:
    """A plain grey square PNG, made here (nothing fetched)."""
    buffer = io.BytesIO()
    Image.new("RGB", (PLACEHOLDER_SIDE, PLACEHOLDER_SIDE), PLACEHOLDER_GREY).save(buffer, "PNG")
    return buffer.getvalue()
