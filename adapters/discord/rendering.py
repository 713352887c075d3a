"""The command layer's replies and job events as Discord messages. The words are the layer's;
this only decides how they look: text, an embed per image (one gallery), files and buttons."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import discord

from adapters.discord.buttons import view_of
from bot.events import Completed, Failed, JobEvent
from bot.replies import Reply
from bot.ui import Button, ImageRef, short_id

MAX_CONTENT = 2000
MAX_DESCRIPTION = 4096
MAX_EMBEDS = 10

ImageReader = Callable[[ImageRef], Awaitable[bytes]]


@dataclass(frozen=True)
class Outgoing:
    """One message to send or to edit into place. Files are made afresh for every attempt:
    discord.py consumes a `discord.File` when it uploads it."""

    content: str = ""
    description: str | None = None  # shown in the first embed, above the images
    images: tuple[tuple[str, bytes], ...] = ()  # (file name, bytes)
    buttons: tuple[Button, ...] = ()
    # Our own link to the first image: the embeds share it, which shows them as one gallery.
    link: str | None = None
    mention: int | None = None  # the user to ping (deliveries outside the interaction)

    def with_mention(self, user_id: int) -> Outgoing:
        return dataclasses.replace(self, mention=user_id)

    def kwargs(self, *, editing: bool) -> dict[str, Any]:
        """Arguments for discord.py's send and edit methods. Editing replaces the attachments,
        embeds and buttons the message had."""
        content = self.content
        if self.mention is not None:
            content = f"<@{self.mention}> {content}".strip()
        files = [discord.File(io.BytesIO(data), filename=name) for name, data in self.images]
        args: dict[str, Any] = {
            "content": _cut(content, MAX_CONTENT) or None,
            "embeds": self._embeds(),
            "view": view_of(self.buttons),
            "allowed_mentions": discord.AllowedMentions(
                everyone=False, roles=False, users=[discord.Object(self.mention)]
            )
            if self.mention is not None
            else discord.AllowedMentions.none(),
        }
        if editing:
            args["attachments"] = files
            if args["view"] is None:
                args["view"] = None  # explicit: remove the buttons the message had
        else:
            args["files"] = files
            if args["view"] is None:
                del args["view"]
        return args

    def _embeds(self) -> list[discord.Embed]:
        names = [name for name, _ in self.images][:MAX_EMBEDS]
        if not names and self.description is None:
            return []
        first = discord.Embed(
            description=_cut(self.description, MAX_DESCRIPTION) if self.description else None,
            url=self.link,
        )
        embeds = [first]
        embeds += [discord.Embed(url=self.link) for _ in names[1:]]
        for embed, name in zip(embeds, names, strict=False):
            embed.set_image(url=f"attachment://{name}")
        return embeds


async def reply_message(reply: Reply, read: ImageReader) -> Outgoing:
    return Outgoing(
        content=reply.text,
        images=await _files(reply.images, read, reply.job_id or "image"),
        buttons=reply.buttons,
        link=_link(reply.images),
    )


async def event_message(event: JobEvent, read: ImageReader) -> Outgoing:
    if isinstance(event, Completed):
        images = await _files(event.images, read, event.job_id)
        return Outgoing(
            description=event.text,
            images=images,
            buttons=event.buttons,
            link=_link(event.images),
        )
    if isinstance(event, Failed):
        return Outgoing(content=event.text, buttons=event.buttons)
    return Outgoing(content=event.text)


async def _files(
    images: Sequence[ImageRef], read: ImageReader, name: str
) -> tuple[tuple[str, bytes], ...]:
    stem = short_id(name)
    files = []
    for index, image in enumerate(images[:MAX_EMBEDS], start=1):
        files.append((f"{stem}-{index}.{image.extension}", await read(image)))
    return tuple(files)


def _link(images: Sequence[ImageRef]) -> str | None:
    return images[0].url if images else None


def _cut(text: str | None, limit: int) -> str:
    if not text:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + "…"
