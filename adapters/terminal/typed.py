"""What a terminal adds to a typed command line: images given by their file path.

`/headshot examples/astronaut.jpg pro smiling` attaches the file as the selfie; a second path
(or `pose_image=PATH`) fills the next image option. Everything else is left to the command
layer, which reads the line as it reads a Telegram message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from bot.commands import CommandSpec, OptionType

# A word with one of these endings is a file to attach, never a word of the prompt.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif"})
_NAMED = re.compile(r"^([a-z][a-z_]{1,39})=(.+)$", re.DOTALL)


@dataclass(frozen=True)
class TypedLine:
    """The line for the command layer, and the files to attach as which image option."""

    text: str
    files: dict[str, Path] = field(default_factory=dict)


def take_files(text: str, spec: CommandSpec | None) -> TypedLine:
    """Move image paths out of `text` (positional ones in the order of the command's image
    options, or given as `option=path`); a line whose command takes no image is left alone."""
    slots = [o.name for o in spec.options if o.type == OptionType.IMAGE] if spec else []
    if not slots or spec is None:
        return TypedLine(text)
    words = text.split()
    head, rest = words[: len(spec.path)], words[len(spec.path) :]
    files: dict[str, Path] = {}
    kept: list[str] = []
    for word in rest:
        named = _NAMED.match(word)
        if named and named.group(1) in slots:
            files[named.group(1)] = _path(named.group(2))
        elif _looks_like_image(word) and len(files) < len(slots):
            files[next(name for name in slots if name not in files)] = _path(word)
        else:
            kept.append(word)
    return TypedLine(" ".join(head + kept), files)


def _looks_like_image(word: str) -> bool:
    return Path(word).suffix.lower() in IMAGE_SUFFIXES


def _path(word: str) -> Path:
    return Path(word).expanduser()
