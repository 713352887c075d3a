"""Reading Telegram messages: the command line they carry, the file they attach, who sent them."""

from __future__ import annotations

from dataclasses import dataclass

from telegram import Message, MessageEntity
from telegram.constants import ChatType

from adapters.telegram.waiting import FileRef

# Telegram's account that stands for a group's anonymous admins in the messages they send.
GROUP_ANONYMOUS_BOT_ID = 1087968824
# Telegram sends photos as JPEG.
PHOTO_TYPE = "image/jpeg"
_OTHER_MEDIA = (
    ("sticker", "sticker"),
    ("animation", "GIF"),
    ("video", "video"),
    ("video_note", "video message"),
    ("voice", "voice message"),
    ("audio", "audio file"),
)


@dataclass(frozen=True)
class Sender:
    """Who a message is from, as the command layer knows people."""

    # A Telegram user id, or the group's own id for its anonymous admins (and a channel's for a
    # channel posting in its discussion group).
    id: int
    # The group's anonymous admins: only a group's admins can speak as the group itself.
    anonymous_admin: bool = False

    @property
    def is_person(self) -> bool:
        return self.id > 0


def sender_of(message: Message) -> Sender | None:
    chat = message.chat
    if message.sender_chat is not None:
        return Sender(message.sender_chat.id, anonymous_admin=message.sender_chat.id == chat.id)
    if message.from_user is None:
        return None
    return Sender(message.from_user.id)


def in_group(message: Message) -> bool:
    return message.chat.type in (ChatType.GROUP, ChatType.SUPERGROUP)


def attached_file(message: Message) -> FileRef | None:
    """The file a message carries: its largest photo, a document, or other media by kind."""
    if message.photo:
        largest = message.photo[-1]
        return FileRef(largest.file_id, "photo", largest.file_size, PHOTO_TYPE)
    if message.document is not None:
        document = message.document
        return FileRef(document.file_id, "document", document.file_size, document.mime_type)
    for attribute, kind in _OTHER_MEDIA:
        media = getattr(message, attribute)
        if media is not None:
            return FileRef(media.file_id, kind, getattr(media, "file_size", None))
    return None


def command_line(message: Message, bot_username: str) -> str | None:
    """The command the message starts with, as a typed line ("/admin ban 1234 spam"): a
    trailing "@thisbot" removed, mentioned people replaced by their ids. None when it starts
    with no command, or with one addressed to another bot."""
    text = message.text if message.text is not None else message.caption
    entities = message.entities if message.text is not None else message.caption_entities
    if not text or not entities:
        return None
    first = next(
        (e for e in entities if e.type == MessageEntity.BOT_COMMAND and e.offset == 0), None
    )
    if first is None:
        return None
    word = _slice(text, first.offset, first.length)
    name, _, addressee = word.removeprefix("/").partition("@")
    if addressee and addressee.lower() != bot_username.lower():
        return None
    rest = _with_mentions_as_ids(text, entities, start=first.length)
    return f"/{name.lower()} {rest}".strip()


def reply_subject(message: Message, sender: Sender) -> int | None:
    """The person the message replies to, when it is someone else (moderators point at people
    that way: Telegram offers no way to look a @username up)."""
    replied = message.reply_to_message
    if replied is None or replied.from_user is None or replied.from_user.is_bot:
        return None
    if replied.sender_chat is not None or replied.from_user.id == sender.id:
        return None
    return replied.from_user.id


def _with_mentions_as_ids(text: str, entities: tuple[MessageEntity, ...], *, start: int) -> str:
    """The text after UTF-16 offset `start`, with each mention of a person who has no username
    (a `text_mention`, which carries the user) replaced by their id."""
    units = text.encode("utf-16-le")
    pieces: list[str] = []
    cursor = start
    for entity in sorted(entities, key=lambda e: e.offset):
        if entity.type != MessageEntity.TEXT_MENTION or entity.user is None:
            continue
        if entity.offset < cursor:
            continue
        pieces.append(_decode(units[cursor * 2 : entity.offset * 2]))
        pieces.append(str(entity.user.id))
        cursor = entity.offset + entity.length
    pieces.append(_decode(units[cursor * 2 :]))
    return "".join(pieces).strip()


def _slice(text: str, offset: int, length: int) -> str:
    """Telegram's entity offsets count UTF-16 code units."""
    units = text.encode("utf-16-le")
    return _decode(units[offset * 2 : (offset + length) * 2])


def _decode(units: bytes) -> str:
    # An entity's edge may split a character in two (Telegram's offsets are not checked here):
    # such a half becomes U+FFFD rather than an error.
    return units.decode("utf-16-le", errors="replace")
