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
from babel.units import format_unit

from bot.i18n.codes import ENGLISH, SHIPPED, read_also

LOCALE_DIR = Path(__file__).resolve().parent.parent / "locale"
DOMAIN = "headshot"


class Translator:
    def __init__(
        self,
        language: str,
        catalogue: stdlib_gettext.NullTranslations | None = None,
        *,
        locale: str | None = None,
    ) -> None:
        """A shipped catalogue's translator; or, given `catalogue`, one that reads it (a
        catalogue being written, previewed before it ships), in `locale`'s number forms."""
        if catalogue is None and language not in SHIPPED:
            raise ValueError(f"no catalogue for {language!r}: one of {', '.join(SHIPPED)}")
        self.language = language
        self.locale = Locale.parse(locale or language)
        if catalogue is None:
            catalogue = (
                stdlib_gettext.NullTranslations()
                if language == ENGLISH
                else Translations.load(LOCALE_DIR, [language], domain=DOMAIN)
            )
        self._catalogue = catalogue

    @property
    def name(self) -> str:
        """The language's own name for itself: "Deutsch", "português (Brasil)", "日本語"."""
        return self.locale.get_display_name(self.locale) or self.language

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

    def seconds(self, value: float, digits: int = 1) -> str:
        """ "12.5 sec", "12,5 s", "12,5 Sek."""
        return self._unit(round(value, digits), "duration-second")

    def duration(self, seconds: float) -> str:
        """A wait, to the minute: "40 sec", "5 min", "3 hr 20 min", "2 days" in English."""
        seconds = max(0.0, seconds)
        if seconds < 60:
            return self._unit(int(seconds), "duration-second")
        minutes = int(seconds // 60)
        if minutes < 60:
            return self._unit(minutes, "duration-minute")
        if minutes < 48 * 60:
            hours = self._unit(minutes // 60, "duration-hour")
            if minutes % 60 == 0:
                return hours
            return f"{hours} {self._unit(minutes % 60, 'duration-minute')}"
        return self._unit(minutes // (24 * 60), "duration-day")

    def _unit(self, value: float, unit: str) -> str:
        return format_unit(value, unit, length="short", locale=self.locale)

    def date(self, day: date, form: str) -> str:
        """`form` is one of CLDR's skeletons: "MMMd" (Nov 21, 21 нояб.), "yMMMd"."""
        pattern = self.locale.datetime_skeletons.get(form)
        return format_date(day, format=pattern or "medium", locale=self.locale)


_PREVIEWED: dict[str, Translator] = {}


def preview(previewed: Translator) -> None:
    """Make a catalogue that does not ship readable by its language's name, for as long as the
    process runs (a test's pseudo-language; a translation being checked in a live bot)."""
    _PREVIEWED[previewed.language] = previewed
    read_also(previewed.language)


def translator(language: str) -> Translator:
    """The translator for a shipped (or previewed) catalogue's language, made once."""
    return _PREVIEWED.get(language) or _shipped(language)


@lru_cache(maxsize=len(SHIPPED))
def _shipped(language: str) -> Translator:
    return Translator(language)
