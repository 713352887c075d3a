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
from bot.i18n import _, number

_USER_ID = re.compile(r"^[A-Za-z0-9_:.-]{1,64}$")
_NAMED = re.compile(r"^([a-z][a-z_]{1,39})=(.+)$", re.DOTALL)
_TRUE = {"true", "yes", "on", "1", "y"}
_FALSE = {"false", "no", "off", "0", "n"}
EVERYONE = "everyone"


class CommandError(Exception):
    """The command or one of its options is wrong. The message is for the user, written in
    their language where it is raised."""


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
        raise CommandError(_("Type a command, for example /headshot with your selfie attached."))
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
        raise CommandError(
            _(
                "I didn't understand “{word}”. Usage: {usage}",
                word=printable(words[index]),
                usage=spec.usage,
            )
        )


def check_options(spec: CommandSpec, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Typed, range-checked options; absent and empty ones are left out."""
    checked: dict[str, Any] = {}
    for name, value in raw.items():
        option = spec.option(name)
        if option is None:
            raise CommandError(_no_such_option(spec, name))
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        checked[name] = _check(spec, option, value)
    for option in spec.options:
        if option.required and option.name not in checked:
            raise CommandError(
                _("Missing {option}. Usage: {usage}", option=option.name, usage=spec.usage)
            )
    return checked


def _check(spec: CommandSpec, option: OptionSpec, value: Any) -> Any:
    kind = option.type
    if kind == OptionType.IMAGE:
        if not isinstance(value, bytes | bytearray) or not value:
            raise CommandError(_("{option} must be an attached image.", option=option.name))
        return bytes(value)
    if kind == OptionType.BOOLEAN:
        return _boolean(option, value)
    if kind == OptionType.INTEGER:
        amount: int | float = _integer(option, value)
    elif kind == OptionType.NUMBER:
        amount = _number(option, value)
    else:
        return _text(option, value)
    if option.choices and amount not in option.choices:
        raise CommandError(
            _(
                "{option} must be one of {choices} (got {value}).",
                option=option.name,
                choices=_choices(option),
                value=str(amount),
            )
        )
    low, high = option.min_value, option.max_value
    if low is not None and low == high and amount != low:
        raise CommandError(
            _(
                "/{command} allows only {option}={value}: leave it out or use {value}.",
                command=spec.name,
                option=option.name,
                value=_fmt(low),
            )
        )
    if (low is not None and amount < low) or (high is not None and amount > high):
        raise CommandError(_out_of_range(option, amount))
    return amount


def _text(option: OptionSpec, value: Any) -> str:
    if not isinstance(value, str | int) or isinstance(value, bool):
        raise CommandError(_("{option} must be text.", option=option.name))
    text = " ".join(str(value).split())
    if option.type == OptionType.USER:
        if text.lower() == EVERYONE and option.allows_everyone:
            return EVERYONE
        if text.lower() == EVERYONE or not _USER_ID.match(text):
            raise CommandError(
                _("{option} must be a user (mention them, or give their id).", option=option.name)
            )
        return text
    if option.max_length is not None and len(text) > option.max_length:
        raise CommandError(
            _(
                "{option} is too long: at most {count} characters.",
                option=option.name,
                count=number(option.max_length),
            )
        )
    if option.choices:
        choice = _choice(option, text)
        if choice is None:
            raise CommandError(
                _(
                    "{option} must be one of {choices} (got “{value}”).",
                    option=option.name,
                    choices=_choices(option),
                    value=printable(text),
                )
            )
        return str(choice)
    if option.items:
        return _items(option, text)
    return text


def _items(option: OptionSpec, text: str) -> str:
    """A comma-separated list of the option's words, each checked here (the generator's own
    check would answer in its English)."""
    words = [word.strip().lower() for word in text.split(",") if word.strip()]
    if not words or any(word not in option.items for word in words):
        raise CommandError(
            _(
                "{option} takes one or more of {choices}, separated by commas (got “{value}”).",
                option=option.name,
                choices=", ".join(option.items),
                value=printable(text),
            )
        )
    return ",".join(words)


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
    raise CommandError(_("{option} must be yes or no.", option=option.name))


def _integer(option: OptionSpec, value: Any) -> int:
    if isinstance(value, bool):
        raise CommandError(_("{option} must be a whole number.", option=option.name))
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d{1,40}", value.strip()):
        return int(value)
    raise CommandError(
        _(
            "{option} must be a whole number (got “{value}”).",
            option=option.name,
            value=printable(str(value)),
        )
    )


def _number(option: OptionSpec, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise CommandError(_("{option} must be a number.", option=option.name))
    try:
        read = float(value) if len(str(value)) <= 40 else math.nan
    except ValueError:
        read = math.nan
    if not math.isfinite(read):
        raise CommandError(
            _(
                "{option} must be a number (got “{value}”).",
                option=option.name,
                value=printable(str(value)),
            )
        )
    return read


def printable(text: str, limit: int = 40) -> str:
    """User input repeated back: printable characters only, cut short (the message around it
    puts it in its language's quotes)."""
    kept = "".join(ch for ch in text if ch.isprintable() and unicodedata.category(ch) != "Cf")
    if len(kept) > limit:
        kept = kept[: limit - 1] + "…"
    return kept


def unknown_command(typed: str) -> str:
    """The refusal of a command that does not exist, in the language being written in."""
    if typed.split(" ")[0].lower() == "admin":
        return _("Which admin command? Type /help to see them (for example /admin stats).")
    return _(
        "Unknown command /{command}: type /help to see the commands.",
        command=printable(typed, 30),
    )


def _no_such_option(spec: CommandSpec, name: str) -> str:
    if not spec.options:
        return _(
            "/{command} has no option “{option}” (its options: none).",
            command=spec.name,
            option=printable(name),
        )
    return _(
        "/{command} has no option “{option}” (its options: {options}).",
        command=spec.name,
        option=printable(name),
        options=", ".join(o.name for o in spec.options),
    )


def _choices(option: OptionSpec) -> str:
    """The values as typed in a command: not words of a sentence."""
    return ", ".join(map(str, option.choices))


def _out_of_range(option: OptionSpec, got: float) -> str:
    low, high = option.min_value, option.max_value
    if low is None:
        return _(
            "{option} must be at most {high} (got {value}).",
            option=option.name,
            high=_figure(high),
            value=str(got),
        )
    if high is None:
        return _(
            "{option} must be at least {low} (got {value}).",
            option=option.name,
            low=_figure(low),
            value=str(got),
        )
    return _(
        "{option} must be from {low} to {high} (got {value}).",
        option=option.name,
        low=_figure(low),
        high=_figure(high),
        value=str(got),
    )


def _fmt(value: float) -> str:
    """A value as typed in a command (`samples=1`): not a figure in a sentence."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _figure(value: float | None) -> str:
    """A limit, written in the language's own form (as many decimals as it has, up to 6)."""
    if value is None:
        return ""
    digits = next((d for d in range(7) if round(value, d) == value), 6)
    return number(value, digits)
