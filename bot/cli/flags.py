"""`generate`'s option flags: the API field each one sets, and its help, written from the table
of documented limits so that a limit changed there changes the help with it."""

from __future__ import annotations

from dataclasses import dataclass

from backends.params import (
    LIMITS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MIN_SIDE,
    IntRange,
    OneOf,
    Operation,
    Rule,
    plain_choices,
)

_UNSET = "the generator's"


@dataclass(frozen=True)
class Flag:
    field: str  # the API's name
    flag: str
    kind: type[int] | type[float] | type[str]
    metavar: str
    what: str


FLAGS = (
    Flag("negative_prompt", "--negative-prompt", str, "TEXT", "what to keep out of the image"),
    Flag("samples", "--samples", int, "N", "how many images"),
    Flag("seed", "--seed", int, "N", "the same seed, selfie and options make the same image"),
    Flag("width", "--width", int, "PX", "image width"),
    Flag("height", "--height", int, "PX", "image height"),
    Flag("num_inference_steps", "--steps", int, "N", "more steps: more detail, slower"),
    Flag("guidance_scale", "--guidance", float, "X", "how closely to follow the prompt"),
    Flag("s_scale", "--s-scale", float, "X", "how strongly to keep your likeness"),
)

# Fields set by flags that are not in the table above.
_OTHER_FLAGS = {"prompt": "--prompt", "operation": "--op"}
_BY_FIELD = {flag.field: flag.flag for flag in FLAGS} | _OTHER_FLAGS


def flag_name(field: str) -> str:
    """The flag a person typed for an API field (the field itself if no flag sets it)."""
    return _BY_FIELD.get(field, field)


def flag_help(flag: Flag) -> str:
    """What the flag does, then what each operation allows and its default."""
    if flag.field == "seed":
        return f"{flag.what}: 0 to {MAX_SEED} (default: a random one)"
    if flag.field == "negative_prompt":
        return f"{flag.what}: at most {MAX_PROMPT_CHARS} characters"
    # Operations that allow the same are listed together: "headshot, facegen: 21, 31 or 41".
    groups: dict[str, list[str]] = {}
    for op in Operation:
        groups.setdefault(_allowed(flag.field, op), []).append(str(op))
    per_op = "; ".join(f"{', '.join(ops)}: {allowed}" for allowed, ops in groups.items())
    return f"{flag.what}. {per_op}"


def _allowed(field: str, op: Operation) -> str:
    limits = LIMITS[op]
    if field == "samples":
        return _range(IntRange(1, limits.max_samples), 1)
    if field in ("width", "height"):
        top = limits.max_width if field == "width" else limits.max_height
        default = limits.defaults.get(field)
        return _range(IntRange(MIN_SIDE, top), default)
    rule = limits.rules.get(field)
    if rule is None:
        return "not an option"
    return _range(rule, limits.defaults.get(field))


def _range(rule: Rule, default: object) -> str:
    if isinstance(rule, OneOf):
        allowed = plain_choices(rule.values)
    elif isinstance(rule, IntRange) and rule.lo == rule.hi:
        allowed = f"only {rule.lo}"
    elif isinstance(rule, IntRange):
        allowed = f"{rule.lo} to {rule.hi}"
    else:
        allowed = f"{rule.lo:g} to {rule.hi:g}"
    return f"{allowed} (default {_UNSET if default is None else default})"
