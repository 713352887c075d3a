"""Text in one language: gettext catalogues compiled from `bot/locale/<language>/LC_MESSAGES/
headshot.po`, and dates and numbers in that language's own forms (Babel, from CLDR).

Messages are written in English in the code, wrapped in `gettext`/`ngettext`; their
placeholders are named (`{days}`) and filled after translation, so a translation may put them
in any order. A message a catalogue lacks reads in English.
"""

from __future__ import annotations

import gettext as stdlib_gettext
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Any

from babel import Locale
from babel.dates import format_date
from babel.numbers import format_decimal
from babel.support import Translations

from bot.i18n.codes import ENGLISH, SHIPPED

LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
DOMAIN = "headshot"


class Translator:
    def __init__(self, language: str) -> None:
        if language not in SHIPPED:
            raise ValueError(f"no catalogue for {language!r}: one of {', '.join(SHIPPED)}")
        self.language = language
        self.locale = Locale.parse(language)
        self._catalogue: stdlib_gettext.NullTranslations = (
            stdlib_gettext.NullTranslations()
            if language == ENGLISH
            else Translations.load(LOCALE_DIR, [language], domain=DOMAIN)
        )

    def gettext(self, message: str, **values: Any) -> str:
        return self._catalogue.gettext(message).format(**values)

    def ngettext(self, singular: str, plural: str, count: int, **values: Any) -> str:
        """The form for `count` (Russian has three, Japanese one); `{count}` is filled too."""
        text = self._catalogue.ngettext(singular, plural, count)
        return text.format(count=self.number(count), **values)

    def number(self, value: float, digits: int = 0) -> str:
        """ "12,5" in German, "12.5" in English."""
        pattern = "#,##0" + ("." + "0" * digits if digits else "")
        return format_decimal(value, format=pattern, locale=self.locale)

    def date(self, day: date, form: str) -> str:
        """`form` is one of CLDR's skeletons: "MMMd" (Nov 21, 21 нояб.), "yMMMd"."""
        pattern = self.locale.datetime_skeletons.get(form)
        return format_date(day, format=pattern or "medium", locale=self.locale)


@lru_cache(maxsize=len(SHIPPED))
def translator(language: str) -> Translator:
    """The translator for a shipped catalogue's language, made once."""
    return Translator(language)
