"""Which catalogue a language code from a platform reads, by written rules.

Discord sends BCP 47 tags ("de", "es-419", "pt-BR", "zh-TW"), Telegram IETF codes as the user's
app has them ("es", "pt-br"), the terminal `LANG` ("de_DE.UTF-8"). The rules, in order:

1. A catalogue for the whole code, region included, is taken ("pt-BR" and "pt-br" -> pt_BR).
2. Otherwise the language's own catalogue, whatever the region ("es-419" and "es-MX" -> es,
   "de_AT.UTF-8" -> de).
3. A Portuguese of another region reads Brazilian Portuguese, the one shipped ("pt-PT" ->
   pt_BR): closer than English for a Portuguese reader.
4. Otherwise no catalogue (None): the caller falls back (the community's, DEFAULT_LANGUAGE,
   English).
"""

from __future__ import annotations

import re

ENGLISH = "en"
# Every catalogue shipped (English is the messages' own language: no catalogue to read).
SHIPPED = ("en", "es", "pt_BR", "de", "fr", "ru", "ja")
# A language whose only catalogue is one region's: other regions read it.
_ONLY_REGION = {"pt": "pt_BR"}
# Catalogues read by their exact name besides those shipped (`translator.preview`).
_PREVIEWED: set[str] = set()
_CODE = re.compile(r"([A-Za-z]{2,3})(?:[-_]([A-Za-z0-9]{2,8}))?(?:[-_][A-Za-z0-9_-]*)?")


def catalogue_for(code: str | None) -> str | None:
    """The shipped catalogue for a platform's language code, or None (see the module's rules)."""
    if not code:
        return None
    if code in _PREVIEWED:
        return code
    found = _CODE.fullmatch(code.strip().split(".", 1)[0].split("@", 1)[0])
    if found is None:
        return None
    language, region = found.group(1).lower(), found.group(2)
    if region:
        whole = f"{language}_{region.upper()}"
        if whole in SHIPPED:
            return whole
    if language in SHIPPED:
        return language
    return _ONLY_REGION.get(language)


def first_shipped(*codes: str | None) -> str:
    """The first of `codes` that has a catalogue (the person's, then the community's, then
    DEFAULT_LANGUAGE), else English."""
    for code in codes:
        catalogue = catalogue_for(code)
        if catalogue is not None:
            return catalogue
    return ENGLISH


def read_also(language: str) -> None:
    """Let a catalogue that does not ship be chosen by its exact name (a previewed one)."""
    _PREVIEWED.add(language)
