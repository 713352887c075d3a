"""The language text is being written in now, and the functions that write in it.

Which language a text is in is decided once, where the bot starts answering someone (the command
layer for a person, a delivery for the job it shows, an announcement for a community), with
`speaking(language)`; everything written inside reads it, tasks started inside included
(asyncio copies the context into them). Messages are wrapped where they are written:

    _("Cancelled: nothing was charged.")
    _("Job {job} is still running.", job=short)
    ngettext("{count} image", "{count} images", count)

`N_` marks a message kept in a table, translated later with `_(table[key])`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from bot.i18n.codes import ENGLISH
from bot.i18n.translator import Translator, translator

_NOW: ContextVar[Translator | None] = ContextVar("language", default=None)


def now() -> Translator:
    """The translator of the language being written in (English outside any `speaking`)."""
    return _NOW.get() or translator(ENGLISH)


def language_now() -> str:
    return now().language


@contextlib.contextmanager
def speaking(language: str) -> Iterator[Translator]:
    """Write in `language` (a shipped catalogue's name) inside the block."""
    written_in = translator(language)
    token = _NOW.set(written_in)
    try:
        yield written_in
    finally:
        _NOW.reset(token)


def _(message: str, **values: Any) -> str:
    return now().gettext(message, **values)


def ngettext(singular: str, plural: str, count: int, **values: Any) -> str:
    return now().ngettext(singular, plural, count, **values)


def N_(message: str) -> str:
    return message


def number(value: float, digits: int = 0) -> str:
    return now().number(value, digits)


def duration(seconds: float) -> str:
    return now().duration(seconds)
