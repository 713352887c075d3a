"""The command layer's replies and job events as Discord messages. The words are the layer's;
this only decides how they look: text, embeds showing the images (galleries of four), files and
buttons, within Discord's limits."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import discord

from adapters.discord.buttons import view_of
from bot.images import image_workers
from bot.jobs.events import Completed, Failed, JobEvent
from bot.replies import Reply
from bot.ui import Button, Chart, ImageRef, short_id

MAX_CONTENT = 2000
MAX_DESCRIPTION = 4096
MAX_EMBEDS = 10
# Discord shows at most four images per gallery (embeds sharing one url).
GALLERY = 4
# What one message may upload in all, whatever the per-file limit; with room for the rest.
MAX_MESSAGE_BYTES = 25 * 1024 * 1024 - 256 * 1024
# The per-file limit where no interaction told us better (Discord's default for servers).
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024

ImageReader = Callable[[ImageRef], Awaitable[bytes]]


@dataclass(frozen=True)
class Picture:
    filename: str
    data: bytes
    # Our own address of the image: embeds sharing one form a gallery. None: not a stored
    # image (a chart), shown in an embed of its own.
    link: str | None


@dataclass(frozen=True)
class Outgoing:
    """One message to send or to edit into place. Files are made afresh for every attempt:
    discord.py consumes a `discord.File` when it uploads it."""

    content: str = ""
    description: str | None = None  # shown in the first embed, above the images
    pictures: tuple[Picture, ...] = ()
    buttons: tuple[Button, ...] = ()
    mention: int | None = None  # the user to ping (deliveries outside the interaction)

    def with_mention(self, user_id: int) -> Outgoing:
        return dataclasses.replace(self, mention=user_id)

    def without_files(self) -> Outgoing:
        """The same message with no uploads (the images stay in /show and /history)."""
        return dataclasses.replace(self, pictures=())

    def kwargs(self, *, editing: bool) -> dict[str, Any]:
        """Arguments for discord.py's send and edit methods. Editing replaces the attachments,
        embeds and buttons the message had."""
        content = self.content
        if self.mention is not None:
            content = f"<@{self.mention}> {content}".strip()
        files = [discord.File(io.BytesIO(p.data), filename=p.filename) for p in self.pictures]
        mentions = (
            discord.AllowedMentions(
                everyone=False, roles=False, users=[discord.Object(self.mention)]
            )
            if self.mention is not None
            else discord.AllowedMentions.none()
        )
        args: dict[str, Any] = {
            "content": _cut(content, MAX_CONTENT) or None,
            "embeds": self._embeds(),
            "allowed_mentions": mentions,
        }
        view = view_of(self.buttons)
        if editing:
            args["attachments"] = files
            args["view"] = view  # None removes the buttons the message had
        else:
            args["files"] = files
            if view is not None:
                args["view"] = view
        return args

    def _embeds(self) -> list[discord.Embed]:
        if not self.pictures:
            if self.description is None:
                return []
            return [discord.Embed(description=_cut(self.description, MAX_DESCRIPTION))]
        embeds = []
        for index, picture in enumerate(self.pictures):
            gallery = self.pictures[index - index % GALLERY].link
            embed = discord.Embed(url=gallery)
            embed.set_image(url=f"attachment://{picture.filename}")
            embeds.append(embed)
        if self.description is not None:
            embeds[0].description = _cut(self.description, MAX_DESCRIPTION)
        return embeds


async def reply_message(reply: Reply, read: ImageReader, upload_limit: int) -> Outgoing:
    pictures = await _pictures(reply.images, read, reply.job_id or "image", upload_limit)
    return Outgoing(
        content=reply.text,
        pictures=pictures + _chart_picture(reply.chart, upload_limit),
        buttons=reply.buttons,
    )


def _chart_picture(chart: Chart | None, upload_limit: int) -> tuple[Picture, ...]:
    """The chart, shown in its embed; none when there is none (or, never expected, too big)."""
    if chart is None or len(chart.png) > upload_limit:
        return ()
    return (Picture(chart.filename, chart.png, None),)


async def event_message(event: JobEvent, read: ImageReader, upload_limit: int) -> Outgoing:
    if isinstance(event, Completed):
        pictures = await _pictures(event.images, read, event.job_id, upload_limit)
        return Outgoing(description=event.text, pictures=pictures, buttons=event.buttons)
    if isinstance(event, Failed):
        return Outgoing(content=event.text, buttons=event.buttons)
    return Outgoing(content=event.text)


async def _pictures(
    images: Sequence[ImageRef], read: ImageReader, name: str, upload_limit: int
) -> tuple[Picture, ...]:
    """The images as files, each shrunk if need be to fit the per-file and per-message limits;
    one that cannot fit is left out (the text still names the job, and /show has it)."""
    shown = images[:MAX_EMBEDS]
    if not shown:
        return ()
    budget = min(upload_limit, MAX_MESSAGE_BYTES // len(shown))
    stem = short_id(name)
    pictures = []
    for index, image in enumerate(shown, start=1):
        data = await read(image)
        fitted = await image_workers().fit(data, image.content_type, budget)
        if fitted is None:
            continue
        data, content_type = fitted
        extension = image.extension if content_type == image.content_type else "jpg"
        pictures.append(Picture(f"{stem}-{index}.{extension}", data, image.url))
    return tuple(pictures)


def _cut(text: str | None, limit: int) -> str:
    if not text:
        return ""
    return text if len(text) <= limit else text[: limit - 1] + "…"
