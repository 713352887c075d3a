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


def normalise_phrase(text: str) -> str:
    """Lower-case, accents folded, runs of non-letters turned into one space."""
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch)).casefold()
    return " ".join(re.findall(r"[^\W_]+", folded))


def banned_phrase_in(prompt: str, banned: Iterable[str]) -> str | None:
    """The first banned word or phrase that `prompt` contains as whole words, else None.

    Matching is on whole words after folding case, accents and punctuation: "Gore" and "GORE!"
    match "gore", "gorilla" does not.
    """
    words = f" {normalise_phrase(prompt)} "
    for phrase in banned:
        needle = normalise_phrase(phrase)
        if needle and f" {needle} " in words:
            return phrase
    return None
