"""Checks the options a command is given against its definition, and reads a typed command line
("/admin quota set everyone 10") for platforms whose commands arrive as text.

Adapters with typed options (Discord) still go through `check_options`: the command layer never
trusts a platform's own validation, so both platforms refuse the same input with the same words.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.commands.spec import CommandSpec, OptionSpec, OptionType, find_command

_USER_ID = re.compile(r"^[A-Za-z0-9_:.-]{1,64}$")
_NAMED = re.compile(r"^([a-z][a-z_]{1,39})=(.+)$", re.DOTALL)
_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}
EVERYONE = "everyone"


class CommandError(Exception):
    """The command or one of its options is wrong. The message is for the user."""


@dataclass(frozen=True)
class ParsedCommand:
    spec: CommandSpec
    options: dict[str, Any]


def parse_line(text: str, *, attachments: Mapping[str, bytes] | None = None) -> ParsedCommand:
    """Read a typed line and check its options."""
    read = read_line(text, attachments=attachments)
    return ParsedCommand(read.spec, check_options(read.spec, read.options))


def read_line(text: str, *, attachments: Mapping[str, bytes] | None = None) -> ParsedCommand:
    """Read "/name [positional…] [option=value…]" into the command and its options as typed
    (unchecked); attachments fill the image options."""
    words = text.strip().removeprefix("/").split()
    if not words:
        raise CommandError("Type a command, for example /headshot with your selfie attached.")
    spec = None
    for length in (3, 2, 1):
        spec = find_command(" ".join(words[:length]))
        if spec is not None:
            words = words[length:]
            break
    if spec is None:
        raise CommandError(unknown_command(" ".join(words[:3])))
    raw: dict[str, Any] = dict(attachments or {})
    positional: list[str] = []
    for word in words:
        named = _NAMED.match(word)
        if named:  # an unknown name is refused by name rather than read as words of a prompt
            raw[named.group(1)] = named.group(2)
        else:
            positional.append(word)
    _assign_positional(spec, positional, raw)
    return ParsedCommand(spec, raw)


def _assign_positional(spec: CommandSpec, words: list[str], raw: dict[str, Any]) -> None:
    index = 0
    for option in spec.options:
        if index >= len(words):
            return
        if option.type == OptionType.IMAGE or option.name in raw:
            continue
        if option.rest:
            raw[option.name] = " ".join(words[index:])
            index = len(words)
        elif option.type == OptionType.BOOLEAN and words[index].lower() == option.name:
            raw[option.name] = True  # "/admin jobs failed": the flag's own name turns it on
            index += 1
        elif option.choices and not option.required and _choice(option, words[index]) is None:
            continue  # an optional choice is only taken when the word is one of its values
        else:
            raw[option.name] = words[index]
            index += 1
    if index < len(words):
        raise CommandError(f"I didn't understand {quote(words[index])}. Usage: {spec.usage}")


def check_options(spec: CommandSpec, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Typed, range-checked options; absent and empty ones are left out."""
    checked: dict[str, Any] = {}
    for name, value in raw.items():
        option = spec.option(name)
        if option is None:
            known = ", ".join(o.name for o in spec.options) or "none"
            raise CommandError(f"/{spec.name} has no option {quote(name)} (its options: {known}).")
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        checked[name] = _check(spec, option, value)
    for option in spec.options:
        if option.required and option.name not in checked:
            raise CommandError(f"Missing {option.name}. Usage: {spec.usage}")
    return checked


def _check(spec: CommandSpec, option: OptionSpec, value: Any) -> Any:
    kind = option.type
    if kind == OptionType.IMAGE:
        if not isinstance(value, bytes | bytearray) or not value:
            raise CommandError(f"{option.name} must be an attached image.")
        return bytes(value)
    if kind == OptionType.BOOLEAN:
        return _boolean(option, value)
    if kind == OptionType.INTEGER:
        number: int | float = _integer(option, value)
    elif kind == OptionType.NUMBER:
        number = _number(option, value)
    else:
        return _text(option, value)
    if option.choices and number not in option.choices:
        allowed = ", ".join(map(str, option.choices))
        raise CommandError(f"{option.name} must be one of {allowed} (got {number}).")
    low, high = option.min_value, option.max_value
    if low is not None and low == high and number != low:
        only = _fmt(low)
        raise CommandError(
            f"/{spec.name} allows only {option.name}={only}: leave it out or use {only}."
        )
    if (low is not None and number < low) or (high is not None and number > high):
        raise CommandError(
            f"{option.name} must be from {_fmt(low)} to {_fmt(high)} (got {number})."
        )
    return number


def _text(option: OptionSpec, value: Any) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise CommandError(f"{option.name} must be text.")
    text = " ".join(str(value).split())
    if option.type == OptionType.USER:
        if text.lower() == EVERYONE and option.allows_everyone:
            return EVERYONE
        if text.lower() == EVERYONE or not _USER_ID.match(text):
            raise CommandError(f"{option.name} must be a user (mention them, or give their id).")
        return text
    if option.max_length is not None and len(text) > option.max_length:
        raise CommandError(f"{option.name} is too long: at most {option.max_length} characters.")
    if option.choices:
        choice = _choice(option, text)
        if choice is None:
            allowed = ", ".join(map(str, option.choices))
            raise CommandError(f"{option.name} must be one of {allowed} (got {quote(text)}).")
        return str(choice)
    return text


def _choice(option: OptionSpec, word: str) -> str | int | float | None:
    wanted = word.strip().lower().replace("-", "_").replace(" ", "_")
    for choice in option.choices:
        if str(choice).lower().replace("-", "_") == wanted:
            return choice
    return None


def _boolean(option: OptionSpec, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise CommandError(f"{option.name} must be yes or no.")


def _integer(option: OptionSpec, value: Any) -> int:
    if isinstance(value, bool):
        raise CommandError(f"{option.name} must be a whole number.")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d{1,40}", value.strip()):
        return int(value)
    raise CommandError(f"{option.name} must be a whole number (got {quote(str(value))}).")


def _number(option: OptionSpec, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CommandError(f"{option.name} must be a number.")
    try:
        number = float(value) if len(str(value)) <= 40 else math.nan
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise CommandError(f"{option.name} must be a number (got {quote(str(value))}).")
    return number


def quote(text: str, limit: int = 40) -> str:
    """User input repeated back: printable characters only, cut short, in quotes."""
    printable = "".join(ch for ch in text if ch.isprintable() and unicodedata.category(ch) != "Cf")
    if len(printable) > limit:
        printable = printable[: limit - 1] + "…"
    return f"“{printable}”"


def unknown_command(typed: str) -> str:
    if typed.split(" ")[0].lower() == "admin":
        return "Which admin command? Type /help to see them (for example /admin stats)."
    return f"Unknown command /{quote(typed, 30)[1:-1]}: type /help to see the commands."


def _fmt(value: float | None) -> str:
    if value is None:
        return "any"
    return str(int(value)) if float(value).is_integer() else str(value)
