"""Generation parameters shared by every backend, checked against the documented limits.

The limits are ModelsLab's documented ones (see shared/modelslab-api.md); the local GPU backend
serves the same operations with the same names, so one table serves both. Every check runs
before any network call and fails with a message naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class Operation(StrEnum):
    HEADSHOT = "headshot"
    FACEGEN = "facegen"
    AVATAR = "avatar"
    FLUX_HEADSHOT = "flux_headshot"


class ParameterError(ValueError):
    """A parameter outside the documented limits. The message is safe to show to a user.

    `field` is the API name; `allowed` says in plain words what is accepted. Each caller names
    the field its own way (a command-line flag, a chat option): `render(name)`. `str()` is the
    rendering under the API name.
    """

    def __init__(
        self,
        field: str,
        allowed: str,
        got: object,
        *,
        message: str | None = None,
        operation: str | None = None,
        template: str | None = None,
    ) -> None:
        self.field = field
        self.allowed = allowed
        self.got = got
        self.operation = operation
        # A whole sentence where `{name}` stands for the field's name, or a fixed `message`.
        self._template = template
        self._message = message
        super().__init__(self.render(field))

    def render(self, name: str) -> str:
        """The message with the field called `name`."""
        if self._template is not None:
            return self._template.replace("{name}", name)
        if self._message is not None:
            return self._message
        where = f" for {self.operation}" if self.operation else ""
        return f"{name} must be {self.allowed}{where} (got {self.got!r})"

    def __str__(self) -> str:
        return self.render(self.field)


SAFETY_CHECKER_TYPES = ("black", "blur", "sensitive_content_text", "pixelate")
CONTROLNETS = ("pose", "canny", "depth")
MAX_SEED = 2**32 - 1
MAX_PROMPT_CHARS = 1000


@dataclass(frozen=True)
class IntRange:
    lo: int
    hi: int

    def check(self, field: str, value: object) -> None:
        if not isinstance(value, int) or isinstance(value, bool) or not self.lo <= value <= self.hi:
            raise ParameterError(field, f"an integer from {self.lo} to {self.hi}", value)


@dataclass(frozen=True)
class FloatRange:
    lo: float
    hi: float

    def check(self, field: str, value: object) -> None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or not self.lo <= value <= self.hi:  # type: ignore[arg-type]
            raise ParameterError(field, f"a number from {self.lo} to {self.hi}", value)


@dataclass(frozen=True)
class OneOf:
    values: tuple[object, ...]

    def check(self, field: str, value: object) -> None:
        if isinstance(value, bool) or value not in self.values:
            raise ParameterError(field, plain_choices(self.values), value)


Rule = IntRange | FloatRange | OneOf


def plain_choices(values: tuple[object, ...]) -> str:
    """The values as a person writes them: 21, 31 or 41."""
    words = [str(value) for value in values]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


_STEPS = OneOf((21, 31, 41))
_S_SCALE = FloatRange(0.0, 2.0)
_UNIT = FloatRange(0.0, 1.0)
_SAFETY_TYPE = OneOf(SAFETY_CHECKER_TYPES)
MIN_SIDE = 64


@dataclass(frozen=True)
class OperationLimits:
    """What one operation accepts: a rule per optional field, and its defaults."""

    max_width: int
    max_height: int
    max_samples: int
    rules: Mapping[str, Rule]
    defaults: Mapping[str, Any]
    seed_required: bool = False
    # A second image whose pose the result copies.
    pose_image: bool = False


LIMITS: dict[Operation, OperationLimits] = {
    Operation.HEADSHOT: OperationLimits(
        max_width=512,
        max_height=768,
        max_samples=2,
        # The OpenAPI file says 1-5, the documented examples send 7.5: accept both readings.
        rules={
            "num_inference_steps": _STEPS,
            "guidance_scale": FloatRange(1.0, 7.5),
            "s_scale": _S_SCALE,
            "safety_checker_type": _SAFETY_TYPE,
        },
        defaults={"num_inference_steps": 21, "guidance_scale": 5.0, "s_scale": 1.0},
    ),
    Operation.FACEGEN: OperationLimits(
        max_width=512,
        max_height=768,
        max_samples=2,
        rules={
            "num_inference_steps": _STEPS,
            "guidance_scale": FloatRange(1.0, 7.5),
            "s_scale": _S_SCALE,
            "safety_checker_type": _SAFETY_TYPE,
        },
        defaults={
            "width": 512,
            "height": 768,
            "num_inference_steps": 21,
            "guidance_scale": 5.0,
            "s_scale": 1.0,
            "safety_checker_type": "sensitive_content_text",
        },
        seed_required=True,
    ),
    Operation.AVATAR: OperationLimits(
        max_width=512,
        max_height=768,
        max_samples=2,
        rules={
            "num_inference_steps": _STEPS,
            "guidance_scale": FloatRange(1.0, 10.0),
            "s_scale": _S_SCALE,
            "safety_checker_type": _SAFETY_TYPE,
            "identitynet_strength_ratio": _UNIT,
            "adapter_strength_ratio": _UNIT,
            "pose_strength": _UNIT,
            "canny_strength": _UNIT,
        },
        defaults={
            "width": 512,
            "height": 768,
            "num_inference_steps": 21,
            "guidance_scale": 5.0,
            "identitynet_strength_ratio": 0.8,
            "adapter_strength_ratio": 1.0,
            "pose_strength": 0.4,
            "canny_strength": 0.3,
            "controlnet_selection": ("pose",),
        },
        pose_image=True,
    ),
    Operation.FLUX_HEADSHOT: OperationLimits(
        max_width=2048,
        max_height=2048,
        max_samples=1,
        rules={"num_inference_steps": IntRange(1, 26), "guidance_scale": FloatRange(1.0, 10.0)},
        defaults={"width": 1024, "height": 1024, "num_inference_steps": 21, "guidance_scale": 3.5},
        seed_required=True,
    ),
}

# Options that only some operations know (every rule of any operation); an operation whose
# limits do not name one refuses it by name.
_OPTIONAL_FIELDS = tuple(dict.fromkeys(name for lim in LIMITS.values() for name in lim.rules))


@dataclass(frozen=True, kw_only=True)
class GenerationParams:
    """Everything about a generation except the images themselves (those travel separately).

    Build with `GenerationParams.create(...)`: it validates and fills the operation's defaults.
    """

    operation: Operation
    prompt: str
    negative_prompt: str | None = None
    samples: int = 1
    seed: int | None = None
    width: int | None = None
    height: int | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    s_scale: float | None = None
    safety_checker: bool = True
    safety_checker_type: str | None = None
    identitynet_strength_ratio: float | None = None
    adapter_strength_ratio: float | None = None
    pose_strength: float | None = None
    canny_strength: float | None = None
    controlnet_selection: tuple[str, ...] | None = None

    @classmethod
    def create(cls, operation: Operation | str, **options: Any) -> GenerationParams:
        """Validate `options` for `operation` and return them with the operation's defaults."""
        try:
            op = Operation(operation)
        except ValueError:
            raise ParameterError("operation", "one of " + ", ".join(Operation), operation) from None
        known = {f.name for f in dataclasses.fields(cls)} - {"operation"}
        for name in options:
            if name not in known:
                allowed = ", ".join(sorted(known))
                message = f"unknown option {name!r}; the options are: {allowed}"
                raise ParameterError(name, allowed, options[name], message=message)
        limits = LIMITS[op]
        values = {k: v for k, v in options.items() if v is not None}
        if "controlnet_selection" in values:
            values["controlnet_selection"] = _as_tuple(values["controlnet_selection"])
        for name in (*_OPTIONAL_FIELDS, "controlnet_selection"):
            if name in values and name not in limits.rules and name not in limits.defaults:
                template = f"{{name}} is not an option of {op}: leave it out"
                raise ParameterError(name, "not set", values[name], operation=op, template=template)
        merged = {**limits.defaults, **values}
        params = cls(operation=op, **merged)
        params.validate()
        return params

    def validate(self) -> None:
        op = self.operation
        limits = LIMITS[op]
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise ParameterError("prompt", "a non-empty text", self.prompt)
        if len(self.prompt) > MAX_PROMPT_CHARS:
            raise ParameterError(
                "prompt", f"at most {MAX_PROMPT_CHARS} characters", len(self.prompt)
            )
        if self.negative_prompt is not None and len(self.negative_prompt) > MAX_PROMPT_CHARS:
            raise ParameterError(
                "negative_prompt",
                f"at most {MAX_PROMPT_CHARS} characters",
                len(self.negative_prompt),
            )
        if limits.max_samples == 1 and self.samples != 1:
            template = f"{op} makes one image at a time: leave out {{name}} or use 1"
            raise ParameterError("samples", "1", self.samples, operation=op, template=template)
        if self.seed is not None:
            IntRange(0, MAX_SEED).check("seed", self.seed)
        if not isinstance(self.safety_checker, bool):
            raise ParameterError("safety_checker", "true or false", self.safety_checker)
        try:
            # What depends on the operation: the error says which operation allows what.
            IntRange(1, limits.max_samples).check("samples", self.samples)
            if self.width is not None:
                IntRange(MIN_SIDE, limits.max_width).check("width", self.width)
            if self.height is not None:
                IntRange(MIN_SIDE, limits.max_height).check("height", self.height)
            for name, rule in limits.rules.items():
                value = getattr(self, name)
                if value is not None:
                    rule.check(name, value)
        except ParameterError as exc:
            exc.operation = op
            raise
        if self.controlnet_selection is not None:
            if not self.controlnet_selection:
                raise ParameterError(
                    "controlnet_selection", "at least one of " + ", ".join(CONTROLNETS), ()
                )
            for item in self.controlnet_selection:
                OneOf(CONTROLNETS).check("controlnet_selection", item)

    @property
    def limits(self) -> OperationLimits:
        return LIMITS[self.operation]

    def with_seed(self, seed: int) -> GenerationParams:
        return dataclasses.replace(self, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the database); `from_dict` reverses it."""
        data = dataclasses.asdict(self)
        data["operation"] = str(self.operation)
        if self.controlnet_selection is not None:
            data["controlnet_selection"] = list(self.controlnet_selection)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationParams:
        fields = dict(data)
        operation = fields.pop("operation")
        return cls.create(operation, **fields)


def _as_tuple(value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if isinstance(value, list | tuple):
        return tuple(value)
    raise ParameterError("controlnet_selection", "a list of " + ", ".join(CONTROLNETS), value)
