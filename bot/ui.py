"""Plain data that adapters render: images, buttons, a job's summary. No platform types here."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from bot.i18n import _
from storage.imagestore import extension_for_content_type

SHORT_ID_CHARS = 8


@dataclass(frozen=True)
class ImageRef:
    url: str
    content_key: str
    content_type: str
    width: int
    height: int
    # The job it is an output of: a message showing it is noted against that job.
    job_id: str | None = None

    @property
    def extension(self) -> str:
        """The file name extension for platforms that are sent the image as a file."""
        return extension_for_content_type(self.content_type)


@dataclass(frozen=True)
class Chart:
    """A picture the command layer drew (a PNG), sent as it is: it is not a stored image."""

    filename: str
    png: bytes = field(repr=False)


class ButtonStyle(StrEnum):
    PRIMARY = "primary"
    SECONDARY = "secondary"
    DANGER = "danger"


@dataclass(frozen=True)
class Button:
    """A button that, when pressed, runs `command` with `options` as the person who pressed it.

    The command layer checks every press again (ownership, permissions), so adapters may encode
    a button in data the user can forge: a forged press is refused like any other bad command.
    """

    label: str
    command: str
    options: Mapping[str, str] = field(default_factory=dict)
    style: ButtonStyle = ButtonStyle.SECONDARY

    def encode(self) -> str:
        """A compact form for platforms that carry button data as text (≤ 64 bytes for ids)."""
        args = " ".join(f"{key}={value}" for key, value in self.options.items())
        return f"{self.command} {args}".strip()


@dataclass(frozen=True)
class JobSummary:
    id: str
    operation: str
    state: str
    style: str | None
    prompt: str | None
    seed: int | None
    created_at: datetime
    error: str | None = None

    @property
    def short_id(self) -> str:
        return short_id(self.id)


def short_id(job_id: str) -> str:
    return job_id[:SHORT_ID_CHARS]


def job_buttons(job_id: str) -> tuple[Button, ...]:
    """What a finished job offers: a new seed with the same settings, or deletion."""
    return (
        Button(_("Re-roll"), "reroll", {"job": job_id}, ButtonStyle.PRIMARY),
        Button(_("Delete"), "delete", {"job": job_id}, ButtonStyle.DANGER),
    )
