"""The bot's languages: which catalogue a platform's language code reads (`codes`), and text,
dates and numbers in that language (`translator`). See LANGUAGES.md."""

from __future__ import annotations

from bot.i18n.codes import ENGLISH, SHIPPED, catalogue_for, first_shipped
from bot.i18n.translator import Translator, translator

__all__ = ["ENGLISH", "SHIPPED", "Translator", "catalogue_for", "first_shipped", "translator"]
