"""Why an image is refused, worded for whoever sent it: a user's selfie or pose image, or a
generator's output.

Images are checked in decode workers, processes that know nothing of the language the user
reads, so a refusal carries its message untranslated: a `Phrase`, an English message marked
with `N_` and the values for its placeholders. `str()` reads it in English (for logs and
tests); `ImageRejected.shown()` in the language being written in where it is shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from bot.i18n import ENGLISH, N_, Translator, now, translator

__all__ = [
    "BUSY",
    "CRASHED",
    "OUTPUT_WORDING",
    "OUT_OF_MEMORY",
    "TOO_SLOW",
    "Figure",
    "ImageRejected",
    "Phrase",
    "Wording",
    "figure",
]


@dataclass(frozen=True)
class Figure:
    """A number with `digits` decimals, written in the reader's language when shown."""

    value: float
    digits: int = 0


def figure(value: float) -> Figure:
    """`value` with the decimals it has, up to 3 (40, 15.7, 0.25), or one significant digit
    below 0.001."""
    digits = next((d for d in range(4) if round(value, d) == value), 3)
    if 0 < abs(value) < 0.0005:
        digits = min(9, -math.floor(math.log10(abs(value))))
    return Figure(value, digits)


@dataclass(frozen=True)
class Phrase:
    """A message to be translated where it is shown: `message` is English and marked with `N_`
    where it is written; `values` fill its named placeholders."""

    message: str
    values: tuple[tuple[str, Value], ...] = ()

    @classmethod
    def of(cls, message: str, **values: Value) -> Phrase:
        return cls(message, tuple(values.items()))

    def written(self, tr: Translator) -> str:
        filled = {name: _written(value, tr) for name, value in self.values}
        return tr.gettext(self.message, **filled)

    def english(self) -> str:
        return self.written(translator(ENGLISH))

    def shown(self) -> str:
        """In the language being written in now."""
        return self.written(now())


# A placeholder's value: text as it is (a size such as "640×480", a format's name), a whole
# number (written with the language's digit grouping), a Figure, or a Phrase translated in turn.
Value = str | int | Figure | Phrase


def _written(value: Value, tr: Translator) -> str:
    if isinstance(value, Phrase):
        return value.written(tr)
    if isinstance(value, Figure):
        return tr.number(value.value, value.digits)
    if isinstance(value, int) and not isinstance(value, bool):
        return tr.number(value)
    return str(value)


class ImageRejected(ValueError):
    """An image we will not use. `str()` is a short message in English (logs); `shown()` is
    the same for the user, in the language being written in.

    `reason` is a stable code for logs and metrics: not_image, unsupported_format,
    too_large, too_big, too_costly, too_small, too_narrow, odd_structure, damaged,
    too_slow, crashed, busy.
    """

    def __init__(self, message: str | Phrase, *, reason: str, **values: Value) -> None:
        self.phrase = message if isinstance(message, Phrase) else Phrase.of(message, **values)
        super().__init__(self.phrase.english())
        self.reason = reason

    def shown(self) -> str:
        """The message in the language being written in now."""
        return self.phrase.shown()

    def __reduce__(self) -> tuple[object, ...]:
        # Crosses from a decode worker to the service: keep the phrase, not the English text.
        return (_rebuild, (self.phrase, self.reason))


def _rebuild(phrase: object, reason: object) -> ImageRejected:
    """What a decode worker sent, checked: anything but a well-formed phrase (a worker taken
    over by a hostile file could send anything) is a crash of the check."""
    if isinstance(reason, str) and _well_formed(phrase, depth=0):
        try:
            return ImageRejected(phrase, reason=reason)  # type: ignore[arg-type]
        except (KeyError, IndexError, ValueError, AttributeError, TypeError):
            pass
    return ImageRejected(CRASHED, reason="crashed")


def _well_formed(value: object, depth: int) -> bool:
    if isinstance(value, Figure):
        return isinstance(value.value, int | float) and isinstance(value.digits, int)
    if not isinstance(value, Phrase):
        return isinstance(value, str | int)
    return (
        depth < 8
        and isinstance(value.message, str)
        and isinstance(value.values, tuple)
        and all(
            isinstance(pair, tuple)
            and len(pair) == 2
            and isinstance(pair[0], str)
            and _well_formed(pair[1], depth + 1)
            for pair in value.values
        )
    )


@dataclass(frozen=True)
class Wording:
    """The texts for one kind of image. Placeholders: {size} (text or a Phrase), {limit},
    {detail} (a Phrase), {min}, {ratio}, {name}, {formats} (a Phrase)."""

    not_image: str
    unsupported: str | None  # {name}; None: say not_image instead
    damaged: str
    too_big: str
    too_costly: str
    too_small: str | None  # None: no minimum size (a generator's output)
    too_narrow: str | None
    odd_structure: str

    @classmethod
    def upload(cls, subject: str) -> Wording:
        """For something a user sent: `subject` is "selfie" or "pose image"."""
        try:
            return _UPLOADS[subject]
        except KeyError:
            raise ValueError(f"no wording for {subject!r}: one of {', '.join(_UPLOADS)}") from None


# What every upload's refusals share; then each subject's own sentences, whole, so that a
# translation can decline "selfie" and "pose image" as its grammar wants.
_UPLOAD_DAMAGED = N_("That image is damaged or truncated: send it again")
_UPLOAD_TOO_BIG = N_("That image is too big ({size}): send one under {limit} megapixels")
_UPLOAD_TOO_COSTLY = N_(
    "That image would take too much memory to process ({size}): send one under {limit} megapixels"
)
_UPLOAD_ODD = N_(
    "That image file is built oddly ({detail}): save it again as a plain JPEG, PNG or WebP and "
    "send it again"
)

_UPLOADS = {
    "selfie": Wording(
        not_image=N_("That file isn't an image: send a {formats} selfie"),
        unsupported=N_("{name} images aren't supported: send a {formats} selfie"),
        damaged=_UPLOAD_DAMAGED,
        too_big=_UPLOAD_TOO_BIG,
        too_costly=_UPLOAD_TOO_COSTLY,
        too_small=N_(
            "That image is too small ({size}): send a selfie at least {min} pixels on each side"
        ),
        too_narrow=N_(
            "That image is too long and narrow ({size}): send a selfie at most {ratio} times as "
            "long as it is wide"
        ),
        odd_structure=_UPLOAD_ODD,
    ),
    "pose image": Wording(
        not_image=N_("That file isn't an image: send a {formats} pose image"),
        unsupported=N_("{name} images aren't supported: send a {formats} pose image"),
        damaged=_UPLOAD_DAMAGED,
        too_big=_UPLOAD_TOO_BIG,
        too_costly=_UPLOAD_TOO_COSTLY,
        too_small=N_(
            "That image is too small ({size}): send a pose image at least {min} pixels on each side"
        ),
        too_narrow=N_(
            "That image is too long and narrow ({size}): send a pose image at most {ratio} "
            "times as long as it is wide"
        ),
        odd_structure=_UPLOAD_ODD,
    ),
}

# A generator's output is refused in the logs only (the user reads the job's failure reason),
# so these stay English.
OUTPUT_WORDING = Wording(
    not_image="The generator returned a file that isn't a JPEG, PNG or WebP image",
    unsupported=None,
    damaged="The generator returned a damaged or truncated image",
    too_big="The generator returned an image that is too big ({size}; limit {limit} megapixels)",
    too_costly=(
        "The generator returned an image that would take too much memory to check "
        "({size}; limit {limit} megapixels)"
    ),
    too_small=None,
    too_narrow=None,
    odd_structure="The generator returned an image file built oddly ({detail})",
)

# Refusals decided outside the image itself, by the decode workers; true of any image.
TOO_SLOW = N_("That image took too long to process: send a smaller or simpler one")
CRASHED = N_("That image could not be processed: send it again as a plain JPEG, PNG or WebP")
BUSY = N_("Too many images are being processed right now: try again in a minute")
OUT_OF_MEMORY = N_("That image would take too much memory to process: send a smaller one")
