"""Why an image is refused, worded for whoever sent it: a user's selfie or pose image, or a
generator's output."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BUSY",
    "CRASHED",
    "OUTPUT_WORDING",
    "OUT_OF_MEMORY",
    "TOO_SLOW",
    "ImageRejected",
    "Wording",
]


class ImageRejected(ValueError):
    """An image we will not use. `str()` is a short message fit for the user.

    `reason` is a stable code for logs and metrics: not_image, unsupported_format,
    too_large, too_big, too_costly, too_small, too_narrow, odd_structure, damaged,
    too_slow, crashed, busy.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        # Crosses from a decode worker to the service: keep the keyword argument.
        return (_rebuild, (str(self), self.reason))


def _rebuild(message: str, reason: str) -> ImageRejected:
    return ImageRejected(message, reason=reason)


@dataclass(frozen=True)
class Wording:
    """The texts for one kind of image. Placeholders: {size}, {limit}, {detail}, {min}, {ratio}."""

    not_image: str
    unsupported: str | None  # {name}; None: say not_image instead
    damaged: str
    too_big: str
    too_costly: str
    too_small: str | None  # None: no minimum size (a generator's output)
    too_narrow: str | None
    odd_structure: str

    @classmethod
    def upload(cls, subject: str, formats: str) -> Wording:
        """For something a user sent: `subject` is "selfie" or "pose image"."""
        send = f"send a {formats} {subject}"
        return cls(
            not_image=f"That file isn't an image: {send}",
            unsupported=f"{{name}} images aren't supported: {send}",
            damaged="That image is damaged or truncated: send it again",
            too_big="That image is too big ({size}): send one under {limit} megapixels",
            too_costly=(
                "That image would take too much memory to process ({size}): "
                "send one under {limit} megapixels"
            ),
            too_small=(
                f"That image is too small ({{size}}): send a {subject} at least {{min}} pixels "
                "on each side"
            ),
            too_narrow=(
                f"That image is too long and narrow ({{size}}): send a {subject} at most "
                "{ratio} times as long as it is wide"
            ),
            odd_structure=(
                "That image file is built oddly ({detail}): save it again as a plain JPEG, PNG "
                "or WebP and send it again"
            ),
        )


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
TOO_SLOW = "That image took too long to process: send a smaller or simpler one"
CRASHED = "That image could not be processed: send it again as a plain JPEG, PNG or WebP"
BUSY = "Too many images are being processed right now: try again in a minute"
OUT_OF_MEMORY = "That image would take too much memory to process: send a smaller one"
