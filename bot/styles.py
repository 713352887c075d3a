"""Style presets: prompt templates and per-operation defaults, kept as data in styles.toml.

The TOML shipped beside this module is loaded and checked once, at import: a broken file fails
the start with one message naming the style and the field. `compose` turns a style and the
user's free text into generation options for `GenerationParams.create`.

A style's title and description are English in the TOML and read in the user's language with
`shown_title()` and `shown_description()` (`bot/i18n/extract.py` puts them in the template);
its prompts stay English.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from types import MappingProxyType
from typing import Any

from backends.params import MAX_PROMPT_CHARS, GenerationParams, Operation, ParameterError
from bot.i18n import _
from bot.i18n.extract import SHOWN_FIELDS

PLACEHOLDER = "{details}"
DEFAULT_STYLE = "corporate"
MAX_DESCRIPTION_CHARS = 80
STYLES_RESOURCE = "styles.toml"

_FIELDS = ("title", "description", "prompt", "negative_prompt")
_NAME = re.compile(r"[a-z][a-z0-9_]*")
# Generation options that belong to the user or the operator, never to a style.
_NOT_STYLE_OPTIONS = frozenset(
    {"operation", "prompt", "negative_prompt", "seed", "samples", "safety_checker"}
)
_OPERATIONS = frozenset(str(op) for op in Operation)
_SPACES = re.compile(r"\s+")
_COMMA_RUN = re.compile(r"\s*,(?:\s*,)*\s*")
_COMMA_BEFORE_STOP = re.compile(r",\s*(?=[.;:!?)])")


class StyleDataError(ValueError):
    """The style data is broken; the message names the source, the style and the field."""


class UnknownStyle(ValueError):
    """A style name that is not one of the presets. The message is safe to show to a user, in
    the language being written in where it is raised."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        shown = name if len(name) <= 40 else name[:39] + "…"
        super().__init__(
            _(
                "unknown style {name}: choose one of {styles}",
                name=repr(shown),
                styles=", ".join(known),
            )
        )


@dataclass(frozen=True)
class Style:
    name: str
    title: str
    description: str
    prompt: str  # template with {details}
    negative_prompt: str
    defaults: Mapping[str, Mapping[str, Any]]  # operation -> option -> value

    def shown_title(self) -> str:
        """The title in the language being written in (`title` is the English one)."""
        return _(self.title)

    def shown_description(self) -> str:
        """The description in the language being written in."""
        return _(self.description)


def load_styles(text: str, *, source: str = STYLES_RESOURCE) -> Mapping[str, Style]:
    """Parse and check style data (TOML text); the styles come back in file order."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StyleDataError(f"{source}: not valid TOML: {exc}") from None
    extra = sorted(set(data) - {"styles"})
    if extra:
        raise StyleDataError(f"{source}: unexpected top-level key(s): {', '.join(extra)}")
    table = data.get("styles")
    if not isinstance(table, dict) or not table:
        raise StyleDataError(f"{source}: no [styles.<name>] tables")
    styles = {name: _parse_style(source, name, body) for name, body in table.items()}
    return MappingProxyType(styles)


def get_style(name: str) -> Style:
    """The preset called `name`: case-insensitive, '-' and ' ' accepted for '_'."""
    key = normalise_name(name)
    style = STYLES.get(key)
    if style is None:
        raise UnknownStyle(" ".join(str(name).split()), list(STYLES))
    return style


def normalise_name(name: str) -> str:
    """'Black-and-white' and ' TECH  STARTUP ' -> 'black_and_white', 'tech_startup'."""
    return re.sub(r"[\s\-_]+", "_", str(name).strip().lower())


def compose(style: Style, details: str | None, operation: Operation | str) -> dict[str, Any]:
    """Generation options for `operation`: the style's prompt with `details` in its slot, its
    negative prompt and its defaults for that operation.

    `details` are stripped and whitespace-collapsed and put in literally (braces stay braces);
    blank details make the slot vanish with its comma. Limits (the prompt's length among them)
    are left to `GenerationParams.create`, which refuses rather than truncates.
    """
    try:
        op = Operation(operation)
    except ValueError:
        raise ParameterError("operation", "one of " + ", ".join(Operation), operation) from None
    return {
        "prompt": _fill(style.prompt, details),
        "negative_prompt": style.negative_prompt,
        **style.defaults.get(str(op), {}),
    }


def _fill(template: str, details: str | None) -> str:
    before, after = template.split(PLACEHOLDER)
    cleaned = _clean_details(details)
    if cleaned:
        return before + cleaned + after
    return _tidy(before + after)


def _clean_details(details: str | None) -> str:
    if details is None:
        return ""
    return _SPACES.sub(" ", details).strip(" ,;")


def _tidy(text: str) -> str:
    text = _SPACES.sub(" ", text)
    text = _COMMA_RUN.sub(", ", text)
    text = _COMMA_BEFORE_STOP.sub("", text)
    return text.strip(" ,")


def _parse_style(source: str, name: str, body: object) -> Style:
    where = f"{source}: style {name!r}"
    if not _NAME.fullmatch(name):
        raise StyleDataError(f"{where}: the name must be lowercase letters, digits and underscores")
    if not isinstance(body, dict):
        raise StyleDataError(f"{where}: must be a table")
    unknown = sorted(set(body) - {*_FIELDS, "defaults"})
    if unknown:
        raise StyleDataError(f"{where}: unknown field(s) {', '.join(unknown)}")
    values: dict[str, str] = {}
    for field in _FIELDS:
        value = body.get(field)
        if value is None:
            raise StyleDataError(f"{where}: missing field {field!r}")
        if not isinstance(value, str) or not value.strip():
            raise StyleDataError(f"{where}: field {field!r} must be a non-empty string")
        if value != value.strip() or "\n" in value or "\r" in value:
            raise StyleDataError(
                f"{where}: field {field!r} must be one line without surrounding spaces"
            )
        # Read by people, through the catalogues: braces would be read as placeholders.
        if field in SHOWN_FIELDS and ("{" in value or "}" in value):
            raise StyleDataError(f"{where}: field {field!r} may hold no curly braces")
        values[field] = value
    if len(values["description"]) > MAX_DESCRIPTION_CHARS:
        raise StyleDataError(
            f"{where}: field 'description' is {len(values['description'])} characters; "
            f"at most {MAX_DESCRIPTION_CHARS} are allowed"
        )
    _check_template(where, values["prompt"])
    defaults = _parse_defaults(where, body.get("defaults", {}))
    if len(values["negative_prompt"]) > MAX_PROMPT_CHARS:
        raise StyleDataError(
            f"{where}: field 'negative_prompt' is longer than {MAX_PROMPT_CHARS} characters"
        )
    return Style(name=name, defaults=defaults, **values)


def _check_template(where: str, template: str) -> None:
    count = template.count(PLACEHOLDER)
    if count != 1:
        raise StyleDataError(
            f"{where}: field 'prompt' must contain {PLACEHOLDER} exactly once (found {count})"
        )
    rest = template.replace(PLACEHOLDER, "")
    if "{" in rest or "}" in rest:
        raise StyleDataError(
            f"{where}: field 'prompt' may hold no curly braces other than {PLACEHOLDER}"
        )
    bare = _fill(template, None)
    if not bare:
        raise StyleDataError(f"{where}: field 'prompt' is empty without details")
    if len(bare) > MAX_PROMPT_CHARS:
        raise StyleDataError(
            f"{where}: field 'prompt' is longer than {MAX_PROMPT_CHARS} characters"
        )


def _parse_defaults(where: str, raw: object) -> Mapping[str, Mapping[str, Any]]:
    if not isinstance(raw, dict):
        raise StyleDataError(f"{where}: field 'defaults' must be a table of operations")
    parsed: dict[str, Mapping[str, Any]] = {}
    for op_name, options in raw.items():
        field = f"defaults.{op_name}"
        if op_name not in _OPERATIONS:
            raise StyleDataError(
                f"{where}: field {field!r}: unknown operation; "
                f"the operations are {', '.join(Operation)}"
            )
        if not isinstance(options, dict):
            raise StyleDataError(f"{where}: field {field!r} must be a table of options")
        frozen: dict[str, Any] = {}
        for key, value in options.items():
            if key in _NOT_STYLE_OPTIONS:
                raise StyleDataError(f"{where}: field '{field}.{key}' is not a style option")
            frozen[key] = tuple(value) if isinstance(value, list) else value
        try:
            GenerationParams.create(op_name, prompt="x", **frozen)
        except ParameterError as exc:
            raise StyleDataError(f"{where}: field '{field}.{exc.field}': {exc}") from None
        parsed[op_name] = MappingProxyType(frozen)
    return MappingProxyType(parsed)


def _load_shipped() -> Mapping[str, Style]:
    resource = resources.files(__package__ or "bot").joinpath(STYLES_RESOURCE)
    styles = load_styles(resource.read_text(encoding="utf-8"), source=f"bot/{STYLES_RESOURCE}")
    if DEFAULT_STYLE not in styles:
        raise StyleDataError(
            f"bot/{STYLES_RESOURCE}: the default style {DEFAULT_STYLE!r} is missing"
        )
    return styles


STYLES: Mapping[str, Style] = _load_shipped()
