"""What `pybabel extract` reads in files that are not Python: the style presets' titles and
descriptions in bot/styles.toml, shown to users (the prompt templates stay English: the
generator reads them, not a person).

babel.cfg names it:

    [extractors]
    styles = bot.i18n.extract:extract_styles
    [styles: bot/styles.toml]
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Collection, Iterator, Mapping
from typing import IO, Any

__all__ = ["SHOWN_FIELDS", "extract_styles"]

# The fields of a style that a person reads.
SHOWN_FIELDS = ("title", "description")

_TABLE = re.compile(r"^\s*\[\s*styles\.([A-Za-z0-9_]+)\s*\]")
_KEY = re.compile(r"^\s*([A-Za-z0-9_]+)\s*=")


def extract_styles(
    fileobj: IO[bytes],
    keywords: Collection[str],
    comment_tags: Collection[str],
    options: Mapping[str, Any],
) -> Iterator[tuple[int, None, str, list[str]]]:
    """Babel's extractor interface: (line, function name, message, comments) for each style's
    title and description, in file order."""
    text = fileobj.read().decode("utf-8")
    styles = tomllib.loads(text).get("styles", {})
    lines = _field_lines(text)
    for name, body in styles.items():
        if not isinstance(body, dict):
            continue
        for field in SHOWN_FIELDS:
            value = body.get(field)
            if isinstance(value, str) and value.strip():
                yield lines.get((name, field), 0), None, value, []


def _field_lines(text: str) -> dict[tuple[str, str], int]:
    """Where each style's fields are written (1-based), for the template's references."""
    found: dict[tuple[str, str], int] = {}
    style: str | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        table = _TABLE.match(line)
        if table:
            style = table.group(1)
            continue
        if line.lstrip().startswith("["):  # another table: a style's defaults, or not a style
            style = None
            continue
        key = _KEY.match(line)
        if style is not None and key and key.group(1) in SHOWN_FIELDS:
            found.setdefault((style, key.group(1)), lineno)
    return found
