"""The command surface: one definition per command, which adapters read to register slash
commands and build help, and which the command layer uses to check every option it is given.

Generation commands are derived from the one table of documented limits (`backends.params`), so a
limit changed there changes the slash command's ranges, the help and the checks together.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from backends.params import (
    CONTROLNETS,
    LIMITS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    FloatRange,
    IntRange,
    Operation,
)
from bot.i18n import N_
from bot.safety import SafetyLevel
from bot.styles import STYLES


class OptionType(StrEnum):
    TEXT = "text"
    INTEGER = "integer"
    NUMBER = "number"
    BOOLEAN = "boolean"
    IMAGE = "image"  # bytes: an attachment
    USER = "user"  # a platform user id (the adapter resolves mentions)


class Access(StrEnum):
    EVERYONE = "everyone"
    # A moderator of the community the command runs in (the adapter says who is one), or an
    # owner; in a DM only an owner, acting on the global scope.
    MODERATOR = "moderator"
    # The bot's owners only (OWNER_IDS), anywhere: what the operator alone should see.
    OWNER = "owner"


@dataclass(frozen=True)
class OptionSpec:
    name: str
    type: OptionType
    # English, marked with N_ where it is written: whoever shows it translates it, `_(...)`.
    description: str
    required: bool = False
    min_value: float | None = None
    max_value: float | None = None
    choices: tuple[str | int | float, ...] = ()
    max_length: int | None = None
    # A TEXT option that is a comma-separated list of these words (one at least).
    items: tuple[str, ...] = ()
    # Typed as text, this option takes the rest of the line (a prompt, a reason).
    rest: bool = False
    # A USER option that also accepts the word "everyone".
    allows_everyone: bool = False


@dataclass(frozen=True)
class CommandSpec:
    name: str  # words separated by spaces: "admin quota set"
    summary: str  # English, marked with N_: translated where it is shown, `_(spec.summary)`
    options: tuple[OptionSpec, ...] = ()
    access: Access = Access.EVERYONE
    # A selfie is needed: as the `selfie` attachment or the `selfie_url` link.
    takes_selfie: bool = False
    # Its answers are for the asker's eyes only. Commands that queue a job answer in public,
    # so that the result appears where the command was run.
    private: bool = True
    # Pressed as a button, its answer takes the place of the message the button is on (the
    # next page of a list, a deleted job's result, a confirmed prompt) instead of a new one.
    replaces_message: bool = False

    @property
    def path(self) -> tuple[str, ...]:
        return tuple(self.name.split(" "))

    def option(self, name: str) -> OptionSpec | None:
        return next((o for o in self.options if o.name == name), None)

    @property
    def usage(self) -> str:
        """How to type it: options by position up to the one that takes the rest of the line,
        the others as name=value."""
        parts = [f"/{self.name}"]
        by_position = True
        for option in self.options:
            if option.type == OptionType.IMAGE:
                continue
            if by_position:
                label = option.name + ("…" if option.rest else "")
                by_position = not option.rest
            else:
                label = f"{option.name}=…"
            parts.append(f"<{label}>" if option.required else f"[{label}]")
        return " ".join(parts)


# ---- generation commands -----------------------------------------------------------------

GENERATION_COMMANDS: dict[str, Operation] = {
    "headshot": Operation.HEADSHOT,
    "facegen": Operation.FACEGEN,
    "avatar": Operation.AVATAR,
    "flux_headshot": Operation.FLUX_HEADSHOT,
}

_SUMMARIES = {
    Operation.HEADSHOT: N_("Turn a selfie into a professional headshot"),
    Operation.FACEGEN: N_("Generate a new photo of your face from a prompt"),
    Operation.AVATAR: N_("Make an avatar of your face, optionally in a given pose"),
    Operation.FLUX_HEADSHOT: N_("A high-resolution FLUX headshot from your selfie"),
}

# What each knob does, in words a user understands. Knobs the moderators control (the safety
# checker) are not user options.
_KNOB_DESCRIPTIONS = {
    "num_inference_steps": N_("More steps: more detail, slower"),
    "guidance_scale": N_("How closely to follow the prompt"),
    "s_scale": N_("How strongly to keep your likeness"),
    "identitynet_strength_ratio": N_("How strongly the face structure is kept"),
    "adapter_strength_ratio": N_("How strongly your identity is applied"),
    "pose_strength": N_("How closely to follow the pose image"),
    "canny_strength": N_("How closely to follow the selfie's outlines"),
}
_USER_KNOBS = tuple(_KNOB_DESCRIPTIONS)
# The user's words go into a style's template; the whole prompt must fit the provider's limit.
PROMPT_BUDGET = MAX_PROMPT_CHARS - max(len(style.prompt) for style in STYLES.values())


def _generation_spec(name: str, operation: Operation) -> CommandSpec:
    limits = LIMITS[operation]
    options = [
        OptionSpec("selfie", OptionType.IMAGE, N_("Your selfie: a clear, front-facing photo")),
        OptionSpec(
            "style", OptionType.TEXT, N_("A style preset (see /styles)"), choices=tuple(STYLES)
        ),
        OptionSpec(
            "prompt",
            OptionType.TEXT,
            N_("Anything to add: clothes, background, mood"),
            max_length=PROMPT_BUDGET,
            rest=True,
        ),
        OptionSpec(
            "selfie_url", OptionType.TEXT, N_("A link to your selfie, instead of attaching it")
        ),
        OptionSpec(
            "samples",
            OptionType.INTEGER,
            N_("How many images (one credit each)"),
            min_value=1,
            max_value=limits.max_samples,
        ),
        OptionSpec(
            "seed", OptionType.INTEGER, N_("Repeat a result"), min_value=0, max_value=MAX_SEED
        ),
        OptionSpec(
            "width", OptionType.INTEGER, N_("Image width"), min_value=64, max_value=limits.max_width
        ),
        OptionSpec(
            "height",
            OptionType.INTEGER,
            N_("Image height"),
            min_value=64,
            max_value=limits.max_height,
        ),
    ]
    for knob in _USER_KNOBS:
        rule = limits.rules.get(knob)
        if rule is None:
            continue
        description = _KNOB_DESCRIPTIONS[knob]
        if isinstance(rule, IntRange):
            kind = OptionType.INTEGER
            options.append(
                OptionSpec(knob, kind, description, min_value=rule.lo, max_value=rule.hi)
            )
        elif isinstance(rule, FloatRange):
            kind = OptionType.NUMBER
            options.append(
                OptionSpec(knob, kind, description, min_value=rule.lo, max_value=rule.hi)
            )
        else:
            choices = tuple(v for v in rule.values if isinstance(v, str | int | float))
            kind = (
                OptionType.INTEGER if all(isinstance(v, int) for v in choices) else OptionType.TEXT
            )
            options.append(OptionSpec(knob, kind, description, choices=choices))
    if "controlnet_selection" in limits.defaults:
        options.append(
            OptionSpec(
                "controlnet_selection",
                OptionType.TEXT,
                N_("Guides to use, comma-separated: pose, canny, depth"),
                max_length=40,
                items=CONTROLNETS,
            )
        )
    if limits.pose_image:
        options.append(OptionSpec("pose_image", OptionType.IMAGE, N_("A photo whose pose to copy")))
    return CommandSpec(
        name, _SUMMARIES[operation], tuple(options), takes_selfie=True, private=False
    )


# ---- everything else ---------------------------------------------------------------------

_JOB = OptionSpec(
    "job", OptionType.TEXT, N_("The job id (from /history)"), required=True, max_length=32
)
_USER = OptionSpec("user", OptionType.USER, N_("The user"), required=True)
_OPERATION = OptionSpec(
    "operation",
    OptionType.TEXT,
    N_("The operation"),
    required=True,
    choices=tuple(GENERATION_COMMANDS),
)
_WORD = OptionSpec(
    "word", OptionType.TEXT, N_("A word or phrase"), required=True, max_length=60, rest=True
)
_PAGE = OptionSpec("page", OptionType.INTEGER, N_("Page number"), min_value=1, max_value=10_000)

_OTHER_COMMANDS = (
    CommandSpec("styles", N_("List the style presets")),
    CommandSpec("history", N_("Your past images, newest first"), (_PAGE,), replaces_message=True),
    CommandSpec("show", N_("One of your jobs in full"), (_JOB,)),
    CommandSpec("reroll", N_("Run one of your jobs again with a new seed"), (_JOB,), private=False),
    CommandSpec(
        "delete", N_("Delete one of your jobs and its images"), (_JOB,), replaces_message=True
    ),
    CommandSpec("quota", N_("What you have left today, and what is in progress")),
    CommandSpec(
        "forget",
        N_("Delete everything we hold about you"),
        (OptionSpec("confirm", OptionType.TEXT, N_("The confirmation code"), max_length=32),),
        replaces_message=True,
    ),
    CommandSpec("help", N_("What this bot can do")),
    CommandSpec(
        "language",
        N_("The language I answer you in: see it, choose one, or auto"),
        (
            OptionSpec(
                "language",
                OptionType.TEXT,
                N_("A language code (de, es, pt-BR, …), or auto for your app's"),
                max_length=16,
            ),
        ),
    ),
    CommandSpec(
        "admin quota set",
        N_("Set the daily allowance for a user or everyone"),
        (
            OptionSpec(
                "user",
                OptionType.USER,
                N_("A user, or everyone"),
                required=True,
                allows_everyone=True,
            ),
            OptionSpec(
                "per_day",
                OptionType.INTEGER,
                N_("Images per day"),
                True,
                min_value=0,
                max_value=10_000,
            ),
        ),
        Access.MODERATOR,
    ),
    CommandSpec(
        "admin grant",
        N_("Give a user extra credits"),
        (_USER, OptionSpec("credits", OptionType.INTEGER, N_("Credits"), True, 1, 10_000)),
        Access.MODERATOR,
    ),
    CommandSpec(
        "admin ban",
        N_("Stop a user from using the bot here"),
        (_USER, OptionSpec("reason", OptionType.TEXT, N_("Why"), max_length=200, rest=True)),
        Access.MODERATOR,
    ),
    CommandSpec("admin unban", N_("Lift a ban"), (_USER,), Access.MODERATOR),
    CommandSpec(
        "admin stats",
        N_("Jobs, success rate, credits and top users"),
        (
            OptionSpec(
                "days", OptionType.INTEGER, N_("How many days back"), min_value=1, max_value=365
            ),
        ),
        Access.MODERATOR,
    ),
    CommandSpec("admin enable", N_("Allow an operation"), (_OPERATION,), Access.MODERATOR),
    CommandSpec("admin disable", N_("Turn an operation off"), (_OPERATION,), Access.MODERATOR),
    CommandSpec(
        "admin style-default",
        N_("The style used when none is given"),
        (
            OptionSpec(
                "style", OptionType.TEXT, N_("A style preset"), required=True, choices=tuple(STYLES)
            ),
        ),
        Access.MODERATOR,
    ),
    CommandSpec(
        "admin safety",
        N_("Make the image safety filter stricter"),
        (
            OptionSpec(
                "level",
                OptionType.TEXT,
                N_("How flagged images are shown"),
                required=True,
                choices=tuple(SafetyLevel),
            ),
        ),
        Access.MODERATOR,
    ),
    CommandSpec(
        "admin banned-words add", N_("Refuse prompts with this word"), (_WORD,), Access.MODERATOR
    ),
    CommandSpec(
        "admin banned-words remove", N_("Allow a banned word again"), (_WORD,), Access.MODERATOR
    ),
    CommandSpec("admin banned-words list", N_("The banned words"), (), Access.MODERATOR),
    CommandSpec(
        "admin jobs",
        N_("Recent jobs here"),
        (OptionSpec("failed", OptionType.BOOLEAN, N_("Only failed ones")),),
        Access.MODERATOR,
    ),
    CommandSpec(
        "admin refund", N_("Give back the credits of a finished job"), (_JOB,), Access.MODERATOR
    ),
    CommandSpec(
        "admin audit",
        N_("Who changed what, newest first"),
        (_PAGE,),
        Access.MODERATOR,
        replaces_message=True,
    ),
    CommandSpec(
        "admin workers", N_("The GPU workers, their jobs and heartbeats"), (), Access.OWNER
    ),
    CommandSpec(
        "admin language",
        N_("The language for people whose own I don't speak, and for the community"),
        (
            OptionSpec(
                "language",
                OptionType.TEXT,
                N_("A language code: de, es, pt-BR, fr, ru, ja or en"),
                required=True,
                max_length=16,
            ),
        ),
        Access.MODERATOR,
    ),
)

# What each group of commands is for, for platforms that show groups ("/admin quota …"); English,
# translated where shown.
GROUP_SUMMARIES: dict[str, str] = {
    "admin": N_("Moderate this bot here"),
    "admin quota": N_("Daily allowances"),
    "admin banned-words": N_("Words refused in prompts"),
}

COMMANDS: dict[str, CommandSpec] = {
    spec.name: spec
    for spec in (
        *(_generation_spec(name, op) for name, op in GENERATION_COMMANDS.items()),
        *_OTHER_COMMANDS,
    )
}


# "flux-headshot" and "flux_headshot" are the same command: platforms differ in what they allow.
_ALIASES = {alias: name for name in COMMANDS for alias in (name, name.replace("_", "-"))}


def find_command(name: str) -> CommandSpec | None:
    """The command with this name, whitespace- and case-insensitively."""
    canonical = _ALIASES.get(" ".join(name.lower().split()))
    return COMMANDS[canonical] if canonical else None
