"""How much memory decoding an image will take, from what its header declares.

The pixel cap alone is no memory limit: 36 MP of lossless WebP needs a canvas in libwebp, a
copy handed to Python and Pillow's own buffer (about 600 MB in all), while 36 MP of baseline
JPEG shrunk on the fly by libjpeg needs a few MB. The estimate follows what each decoder and
our own processing hold at their peak, so that one budget fits every format and depth.
"""

from __future__ import annotations

from bot.images.structure import Layout

__all__ = ["DEFAULT_BUDGET", "estimate", "jpeg_reduction"]

DEFAULT_BUDGET = 256 * 1024 * 1024


def jpeg_reduction(width: int, height: int, target: tuple[int, int]) -> int:
    """The factor (1, 2, 4 or 8) libjpeg decodes at when Pillow's draft asks for `target`:
    the largest that keeps both sides at least the target's."""
    scale = min(width // max(1, target[0]), height // max(1, target[1]))
    return next(factor for factor in (8, 4, 2, 1) if scale >= factor)


def estimate(layout: Layout, *, reduction: int = 1, resized: bool = True) -> int:
    """Peak bytes to decode the image (at 1/`reduction` scale, for JPEG) and, with
    `resized`, to bring it to an RGB selfie: conversion, premultiplied alpha, downscaling."""
    full = layout.width * layout.height
    pixels = -(-layout.width // reduction) * -(-layout.height // reduction)
    per_pixel = _pillow_bytes(layout)
    if resized:
        if _converted_first(layout):
            per_pixel += 4
        if layout.alpha:
            per_pixel += 4  # Pillow resamples RGBA through a premultiplied copy
        per_pixel += 1  # the reduced intermediate, a quarter of a 4-byte image at most
    return int(pixels * per_pixel + full * _decoder_bytes(layout))


def _pillow_bytes(layout: Layout) -> int:
    """Bytes per pixel of the image Pillow decodes into (RGB is stored as 4)."""
    if layout.format == "JPEG":
        return 1 if layout.channels == 1 else 4
    if layout.format == "PNG" and layout.channels == 1:
        return 2 if layout.bit_depth == 16 and not layout.palette else 1
    return 4


def _converted_first(layout: Layout) -> bool:
    """Palettes, 1-bit and 16-bit greys are converted to RGB(A) before resampling."""
    if layout.format != "PNG" or layout.channels != 1:
        return False
    return layout.palette or layout.bit_depth != 8 or layout.alpha


def _decoder_bytes(layout: Layout) -> float:
    """Bytes per pixel (of the full size) the decoder holds beside Pillow's buffer."""
    wide = 2 if layout.bit_depth > 8 else 1
    if layout.format == "JPEG":
        # A progressive decode keeps every 16-bit coefficient until the last scan.
        return 2 * layout.coefficients_per_pixel if layout.progressive else 0.0
    if layout.format == "WEBP":
        # libwebp's RGBA canvas, and the copy handed to Pillow; animation keeps one more.
        return 4 * (3 if layout.animated else 2)
    if layout.format == "HEIF":
        # The HEVC decoder's YUV 4:2:0 planes and libheif's interleaved RGB(A).
        return wide * (1.5 + layout.channels)
    # PNG decodes row by row; 16-bit rows are unpacked to 8 bits as they come.
    return 0.0
