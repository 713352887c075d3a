"""Prompt safety: banned words, and how strictly the provider's image safety checker hides
flagged images. Both are checked before a credit is reserved."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from enum import StrEnum


class SafetyLevel(StrEnum):
    """How a flagged image is shown, least strict first. The checker is always on."""

    STANDARD = "standard"  # the operation's own default
    BLUR = "blur"
    PIXELATE = "pixelate"
    BLACK = "black"

    @property
    def rank(self) -> int:
        return list(SafetyLevel).index(self)

    @property
    def checker_type(self) -> str | None:
        """ModelsLab's `safety_checker_type` for this level (None: the operation's default)."""
        return None if self is SafetyLevel.STANDARD else str(self)


def strictest(*levels: SafetyLevel) -> SafetyLevel:
    return max(levels, key=lambda level: level.rank)


# Letters from other scripts that look like Latin ones, as people use them to slip a word past.
_LOOKALIKES = str.maketrans(
    "аеорсухіјѕԁɡӏαβεικνορτυχ0134@$",
    "aeopcyxijsdglabeiknoptuxoieaas",
)


def normalise_phrase(text: str) -> str:
    """A word list entry in one spelling: case, accents and invisible characters folded,
    punctuation and runs of spaces turned into one space."""
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(
        ch for ch in folded if not unicodedata.combining(ch) and unicodedata.category(ch) != "Cf"
    )
    return " ".join(re.findall(r"[^\W_]+", folded.casefold()))


def _match_form(text: str) -> str:
    """`normalise_phrase`, then lookalike letters and digits read as the letters they imitate,
    and spelled-out letters ("g o r e") joined into one word."""
    words: list[str] = []
    letters: list[str] = []
    for word in normalise_phrase(text).translate(_LOOKALIKES).split():
        if len(word) == 1:
            letters.append(word)
            continue
        if letters:
            words.append("".join(letters))
            letters = []
        words.append(word)
    if letters:
        words.append("".join(letters))
    return " ".join(words)


def banned_phrase_in(prompt: str, banned: Iterable[str]) -> str | None:
    """The first banned word or phrase that `prompt` contains as whole words, else None.

    Both sides are compared in `_match_form`: "Gore", "GORE!", "g.o.r.e", "g0re", "gоre" with
    a Cyrillic о and "g\u200bore" with a zero-width space all match "gore"; "gorilla" does not.
    """
    words = f" {_match_form(prompt)} "
    for phrase in banned:
        needle = _match_form(phrase)
        if needle and f" {needle} " in words:
            return phrase
    return None
