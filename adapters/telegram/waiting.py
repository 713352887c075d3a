"""What the bot is waiting for from someone: the photo after a bare `/headshot`, or the style
picked on a keyboard.

The waits are the command layer's (`bot.waits`), in the database, so that the photo or the press
may reach any replica. What this adapter keeps with a wait is its note (`Note`): the command that
waits and the bot's message that asked, as JSON, and only Telegram's file ids, never a photo.
A wait that runs out is announced in the message that asked, once, by whichever replica claims
it (`keep_announcing_ended_waits`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from bot.commands import CommandLayer
from bot.waits import Wait

log = logging.getLogger(__name__)

# How often a replica looks for waits that ran out (a look that finds none writes nothing).
ENDED_CHECK_SECONDS = 1.0


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

    def to_json(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "kind": self.kind,
            "size": self.size,
            "content_type": self.content_type,
        }

    @classmethod
    def from_json(cls, data: Any) -> FileRef:
        fields = _object(data, "file")
        return cls(
            _text(fields, "file_id"),
            _text(fields, "kind"),
            _number(fields, "size", optional=True),
            _text(fields, "content_type", optional=True),
        )


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
    # The language the asker was answered in (the wait's end is told in it).
    language: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "chat_id": self.chat_id,
            "sender_id": self.sender_id,
            "reply_to": self.reply_to,
            "selfie": None if self.selfie is None else self.selfie.to_json(),
            "language": self.language,
        }

    @classmethod
    def from_json(cls, data: Any) -> Request:
        fields = _object(data, "request")
        selfie = fields.get("selfie")
        return cls(
            _text(fields, "line"),
            _number(fields, "chat_id"),
            _number(fields, "sender_id"),
            _number(fields, "reply_to", optional=True),
            None if selfie is None else FileRef.from_json(selfie),
            _text(fields, "language", optional=True),
        )


@dataclass(frozen=True)
class Note:
    """What this adapter keeps with a wait: the request, and the bot's message that asked (it
    carries the keyboard, and is edited when the wait ends)."""

    request: Request
    prompt_id: int

    def to_json(self) -> dict[str, Any]:
        return {"request": self.request.to_json(), "prompt_id": self.prompt_id}

    @classmethod
    def of(cls, wait: Wait) -> Note:
        """The note kept with a wait; ValueError if it is not one of this adapter's."""
        return cls(
            Request.from_json(wait.request.get("request")), _number(wait.request, "prompt_id")
        )


async def keep_announcing_ended_waits(
    layer: CommandLayer, platform: str, announce: Callable[[Wait, Note], Awaitable[None]]
) -> None:
    """Announce each wait that ran out with nobody answering, for as long as the adapter runs.
    A wait is claimed before it is announced and deleted after: announced once, unless the
    process dies in between (then another one announces it again)."""
    while True:
        await asyncio.sleep(ENDED_CHECK_SECONDS)
        try:
            for wait in await layer.waits.ended(platform):
                try:
                    await announce(wait, Note.of(wait))
                except ValueError:
                    log.error("wait %s: its note is unreadable; it ends untold", wait.token)
                await layer.waits.announced(wait)
        except Exception:
            log.exception("announcing ended waits failed; trying again shortly")


def _object(data: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ValueError(f"not a {what}: {data!r}")
    return data


def _text(fields: Mapping[str, Any], name: str, *, optional: bool = False) -> Any:
    value = fields.get(name)
    if (value is None and optional) or isinstance(value, str):
        return value
    raise ValueError(f"{name} is not text: {value!r}")


def _number(fields: Mapping[str, Any], name: str, *, optional: bool = False) -> Any:
    value = fields.get(name)
    if value is None and optional:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"{name} is not a whole number: {value!r}")
