"""Decoding an image for face work: bounded, and at the size the detector runs on."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from PIL import Image

__all__ = ["MAX_PIXELS", "Picture", "UnreadableImage", "decode"]

MAX_PIXELS = 50_000_000
# Sanitised selfies are JPEG; generators' outputs are JPEG, PNG or WebP.
_FORMATS = ["JPEG", "PNG", "WEBP"]


class UnreadableImage(ValueError):
    """The bytes are not an image face work accepts (not decodable, or over MAX_PIXELS)."""


@dataclass(frozen=True)
class Picture:
    """An image's RGB pixels with its long side at the detection size.

    `scale` turns a length in these pixels into one in the image's own pixels.
    """

    pixels: NDArray[np.uint8]
    scale: float
    width: int
    height: int


def decode(data: bytes, side: int) -> Picture:
    """Decode `data` and resize it (up or down) so that its long side is `side` pixels."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_FORMATS)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise UnreadableImage(f"{width}×{height} is over {MAX_PIXELS / 1e6:g} MP")
            factor = side / max(width, height)
            target = (max(1, round(width * factor)), max(1, round(height * factor)))
            if image.format == "JPEG":
                # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below the requested size.
                image.draft("RGB", target)
            image = image.convert("RGB")
    except UnreadableImage:
        raise
    except Exception as exc:  # not an image, damaged, or a decompression bomb
        raise UnreadableImage(f"cannot decode: {type(exc).__name__}") from None
    if image.size != target:
        image = image.resize(target, Image.Resampling.BILINEAR)
    return Picture(
        pixels=np.asarray(image, dtype=np.uint8),
        scale=max(width, height) / side,
        width=width,
        height=height,
    )
