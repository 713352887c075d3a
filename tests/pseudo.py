"""A pseudo-language for tests: every message, however it was found, comes out as `[!! … !!]`.

With it, a text a person sees that still has words outside the marks was written without going
through the catalogue: a string nobody wrapped, which "every id is translated" cannot catch.
"""

from __future__ import annotations

import gettext
import re

from bot.i18n import Translator, preview, translator
from bot.styles import STYLES

PSEUDO = "qps"
OPEN, CLOSE = "[!! ", " !!]"
_INNERMOST = re.compile(r"\[!! (?:(?!\[!! |\s!!\]).)*? !!\]", re.DOTALL)
# What a person may see outside the marks: what they or the platform wrote (ids, numbers,
# mentions), command names (the same in every language), and punctuation between messages.
_USERS_OWN = re.compile(r"<@!?\d+>|\b[0-9a-f]{6,32}\b|\d+|/[a-z][a-z_-]*")
# Words typed as they are in every language: the operations (named as their commands are) and
# the styles' names (style:<name>; their titles and descriptions are translated).
_TYPED = re.compile(r"\b(?:headshot|facegen|avatar|flux[ _]headshot|" + "|".join(STYLES) + r")\b")


class PseudoCatalogue(gettext.NullTranslations):
    def gettext(self, message: str) -> str:
        return f"{OPEN}{message}{CLOSE}"

    def ngettext(self, msgid1: str, msgid2: str, n: int) -> str:
        return f"{OPEN}{msgid1 if n == 1 else msgid2}{CLOSE}"


def install_pseudo() -> str:
    """Make the pseudo-language readable as `qps` (a platform's code for it); returns that."""
    preview(Translator(PSEUDO, PseudoCatalogue(), locale="en"))
    return PSEUDO


def unmarked(text: str, *users_own: str) -> str:
    """What of `text` is outside every mark, once the parts a person wrote (`users_own`) and
    ids and numbers are taken out: empty when everything else was translated."""
    while True:
        stripped = _INNERMOST.sub("", text)
        if stripped == text:
            break
        text = stripped
    for own in users_own:
        text = text.replace(own, "")
    text = _TYPED.sub("", _USERS_OWN.sub("", text))
    return "".join(char for char in text if char.isalpha())


def opening(language: str, singular: str, plural: str | None = None) -> str:
    """A message's translation up to its first placeholder (its fixed start), for checking a
    text whose values a test cannot know: `text.startswith(opening("de", "Done: …"))`."""
    names = set(re.findall(r"\{(\w+)\}", singular + (plural or "")))
    marks = {name: "\x00" for name in names if name != "count"}
    tr = translator(language)
    text = tr.ngettext(singular, plural, 1, **marks) if plural else tr.gettext(singular, **marks)
    return text.split("\x00", 1)[0].split("1", 1)[0] if plural else text.split("\x00", 1)[0]
