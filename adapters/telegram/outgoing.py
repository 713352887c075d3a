"""The command layer's replies and job events as Telegram messages. The words are the layer's;
this decides how they look (text, photos or files, inline buttons) within Telegram's limits.

Inline buttons carry the command they run as text in their callback data (`hs:reroll job=…`),
so they work after a restart and need nothing kept in memory; the command layer checks every
press as the presser's own command, so forged data is refused like a mistyped command.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from telegram import (
    Bot,
    ForceReply,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputFile,
    InputMediaDocument,
    InputMediaPhoto,
    Message,
    ReplyParameters,
)

from bot.images import image_workers
from bot.ui import Button, Chart, ImageRef, short_id

log = logging.getLogger(__name__)

MAX_TEXT = 4096
MAX_CAPTION = 1024
MAX_ALERT = 200
MAX_CALLBACK_DATA = 64
# Telegram takes photos up to 10 MB (and recompresses them) and other files up to 50 MB.
PHOTO_LIMIT = 10 * 1024 * 1024
DOCUMENT_LIMIT = 50 * 1024 * 1024
ALBUM_MAX = 10
BUTTONS_PER_ROW = 3
COMMAND_PREFIX = "hs:"
PICK_PREFIX = "st:"

ImageReader = Callable[[ImageRef], Awaitable[bytes]]


def telegram_length(text: str) -> int:
    """Telegram counts a text's length in UTF-16 code units (an emoji may be two)."""
    return len(text.encode("utf-16-le")) // 2


def cut(text: str, limit: int) -> str:
    """The text within `limit` as Telegram counts, ending in "…" when shortened."""
    if telegram_length(text) <= limit:
        return text
    units = text.encode("utf-16-le")[: (limit - 1) * 2]
    return units.decode("utf-16-le", errors="ignore") + "…"


# ---- buttons --------------------------------------------------------------------------------


def keyboard(buttons: Sequence[Button]) -> InlineKeyboardMarkup | None:
    """The buttons as an inline keyboard, or None for none. A button whose command does not fit
    Telegram's 64 bytes of callback data is left out (and logged: it is a bug of ours)."""
    row = []
    for button in buttons:
        data = COMMAND_PREFIX + button.encode()
        if len(data.encode()) > MAX_CALLBACK_DATA:
            log.error("button %r does not fit Telegram's callback data; left out", data)
            continue
        row.append(InlineKeyboardButton(button.label, callback_data=data))
    return _rows(row)


def command_of_press(data: str | None) -> str | None:
    """The command text a pressed button carries; None when the data is not one of ours."""
    if data is None or not data.startswith(COMMAND_PREFIX):
        return None
    line = data.removeprefix(COMMAND_PREFIX)
    if not line or not line.isprintable() or len(data.encode()) > MAX_CALLBACK_DATA:
        return None
    return line


def pick_keyboard(
    token: str, choices: Sequence[tuple[str, str]], default: str
) -> InlineKeyboardMarkup:
    """One button per style, and one for the community's default, for the pick `token`."""
    buttons = [
        InlineKeyboardButton(title, callback_data=f"{PICK_PREFIX}{token}:{name}")
        for name, title in choices
    ]
    buttons.append(InlineKeyboardButton(default, callback_data=f"{PICK_PREFIX}{token}:"))
    markup = _rows(buttons)
    assert markup is not None
    return markup


def pick_of_press(data: str | None) -> tuple[str, str] | None:
    """(token, style) of a pressed style button ("" for the default); None if not one."""
    if data is None or not data.startswith(PICK_PREFIX):
        return None
    token, colon, style = data.removeprefix(PICK_PREFIX).partition(":")
    if not colon or not token.isalnum() or not (style == "" or style.replace("_", "").isalnum()):
        return None
    return token, style


def _rows(buttons: list[InlineKeyboardButton]) -> InlineKeyboardMarkup | None:
    if not buttons:
        return None
    rows = [buttons[i : i + BUTTONS_PER_ROW] for i in range(0, len(buttons), BUTTONS_PER_ROW)]
    return InlineKeyboardMarkup(rows)


# ---- messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Upload:
    """One image to send: as a photo (Telegram recompresses it) or as a file."""

    filename: str
    data: bytes
    as_photo: bool
    # The job it is an output of: the message showing it is noted against that job.
    job_id: str | None = None


async def uploads(
    images: Sequence[ImageRef], read: ImageReader, *, name: str, as_photo: bool
) -> list[Upload]:
    """The images, as photos where they fit Telegram's photo limit (all as files otherwise: an
    album cannot mix the two), each shrunk if need be to fit the file limit."""
    shown = images[:ALBUM_MAX]
    datas = [await read(image) for image in shown]
    as_photo = as_photo and all(len(data) <= PHOTO_LIMIT for data in datas)
    stem = short_id(name)
    files = []
    for index, (image, data) in enumerate(zip(shown, datas, strict=True), start=1):
        extension = image.extension
        if len(data) > DOCUMENT_LIMIT:
            fitted = await image_workers().fit(data, image.content_type, DOCUMENT_LIMIT)
            if fitted is None:
                continue
            data, content_type = fitted
            extension = image.extension if content_type == image.content_type else "jpg"
        files.append(Upload(f"{stem}-{index}.{extension}", data, as_photo, image.job_id))
    return files


def chart_upload(chart: Chart) -> Upload:
    """A chart goes as a photo, whatever `TELEGRAM_SEND_AS` says of results."""
    return Upload(chart.filename, chart.png, as_photo=True)


async def send(
    bot: Bot,
    chat_id: int,
    text: str,
    *,
    files: Sequence[Upload] = (),
    markup: InlineKeyboardMarkup | ForceReply | None = None,
    reply_to: int | None = None,
) -> Message:
    """Send `text` with its images and buttons; returns the message carrying the buttons.

    One image is sent with the text as its caption; several as an album followed by the text
    (an album cannot carry buttons)."""
    sent = await send_all(bot, chat_id, text, files=files, markup=markup, reply_to=reply_to)
    return sent[-1]


async def send_all(
    bot: Bot,
    chat_id: int,
    text: str,
    *,
    files: Sequence[Upload] = (),
    markup: InlineKeyboardMarkup | ForceReply | None = None,
    reply_to: int | None = None,
) -> list[Message]:
    """`send`, returning every message it made: the one of each file in turn (the first has
    the text as its caption if it fits), then the text's own message if it needed one."""
    replying = _replying(reply_to)
    if len(files) == 1 and telegram_length(text) <= MAX_CAPTION:
        upload = files[0]
        content = InputFile(upload.data, filename=upload.filename)
        if upload.as_photo:
            photo = await bot.send_photo(
                chat_id,
                content,
                caption=text or None,
                reply_markup=markup,
                reply_parameters=replying,
            )
            return [photo]
        document = await bot.send_document(
            chat_id, content, caption=text or None, reply_markup=markup, reply_parameters=replying
        )
        return [document]
    sent: list[Message] = []
    if len(files) == 1:
        sent += await send_all(bot, chat_id, "", files=files, reply_to=reply_to)
    elif files:
        album = await bot.send_media_group(chat_id, _media(files), reply_parameters=replying)
        sent += album
        replying = _replying(album[0].message_id)
    text_message = await bot.send_message(
        chat_id, cut(text, MAX_TEXT), reply_markup=markup, reply_parameters=replying
    )
    return [*sent, text_message]


def _media(files: Sequence[Upload]) -> list[InputMediaPhoto | InputMediaDocument]:
    # Given bytes (not an InputFile), python-telegram-bot attaches each as its own part.
    return [
        InputMediaPhoto(f.data, filename=f.filename)
        if f.as_photo
        else InputMediaDocument(f.data, filename=f.filename)
        for f in files
    ]


def _replying(message_id: int | None) -> ReplyParameters | None:
    if message_id is None:
        return None
    # The message may have been deleted meanwhile: then the answer stands on its own.
    return ReplyParameters(message_id, allow_sending_without_reply=True)


def is_media(message: Message) -> bool:
    """Whether a message shows a file (its text is a caption, edited differently)."""
    return bool(message.photo or message.document or message.effective_attachment)
