"""The bot's languages: which catalogue a platform's language code reads (`codes`), text,
dates and numbers in that language (`translator`), and the language being written in now
(`speaking`). See LANGUAGES.md."""

from __future__ import annotations

from bot.i18n.codes import ENGLISH, SHIPPED, catalogue_for, first_shipped
from bot.i18n.speaking import N_, _, duration, language_now, ngettext, now, number, speaking
from bot.i18n.translator import Translator, preview, translator

__all__ = [
    "ENGLISH",
    "N_",
    "SHIPPED",
    "Translator",
    "_",
    "catalogue_for",
    "duration",
    "first_shipped",
    "language_now",
    "ngettext",
    "now",
    "number",
    "preview",
    "speaking",
    "translator",
]
