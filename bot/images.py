"""Hostile-input image handling: selfies in, provider outputs back.

Everything here is synchronous Pillow work; callers run it in a thread
(`asyncio.to_thread`). Every failure a user or a provider can cause surfaces as
`ImageRejected`, whose text can be shown to the user as it is.
"""

from __future__ import annotations

import functools
import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, ImageOps, UnidentifiedImageError

if TYPE_CHECKING:
    from PIL import ImageCms

__all__ = [
    "ImageInfo",
    "ImageRejected",
    "SanitisedImage",
    "check_upload",
    "fit_within",
    "heic_supported",
    "inspect_output",
    "sanitise_selfie",
]

log = logging.getLogger(__name__)

_MB = 1024 * 1024
_JPEG_QUALITY = 92
_WHITE = (255, 255, 255)
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"

# Formats a selfie may arrive in; HEIF is added when pillow-heif is importable.
_SELFIE_FORMATS = ("JPEG", "PNG", "WEBP")
# Formats a provider's output may come back in, with their MIME type and extension.
_OUTPUT_FORMATS = {
    "JPEG": ("image/jpeg", "jpg"),
    "PNG": ("image/png", "png"),
    "WEBP": ("image/webp", "webp"),
}
_HEIF_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
# Magic numbers of common image formats we refuse, to name them in the message.
_REFUSED_MAGIC = {
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}


class ImageRejected(ValueError):
    """An image we will not use. `str()` is a short message fit for the user.

    `reason` is a stable code for logs and metrics: not_image, unsupported_format,
    too_large, too_big, too_small, damaged.
    """

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SanitisedImage:
    """A selfie re-encoded as a metadata-free sRGB JPEG."""

    data: bytes
    content_type: str
    width: int
    height: int


@dataclass(frozen=True)
class ImageInfo:
    """What a provider's output turned out to be, once fully decoded."""

    format: str
    content_type: str
    extension: str
    width: int
    height: int


@dataclass(frozen=True)
class _Wording:
    not_image: str
    damaged: str
    too_big: str  # formatted with `size` and `limit`


def _selfie_wording() -> _Wording:
    send = f"send a {_accepted_formats_phrase()} selfie"
    return _Wording(
        not_image=f"That file isn't an image: {send}",
        damaged="That image is damaged or truncated: send it again",
        too_big="That image is too big ({size}): send one under {limit} megapixels",
    )


_OUTPUT_WORDING = _Wording(
    not_image="The generator returned a file that isn't a JPEG, PNG or WebP image",
    damaged="The generator returned a damaged or truncated image",
    too_big="The generator returned an image that is too big ({size}; limit {limit} megapixels)",
)


@functools.cache
def heic_supported() -> bool:
    """Register the HEIF/HEIC opener on first use; False when pillow-heif is missing."""
    try:
        import pillow_heif
    except ImportError:
        return False
    pillow_heif.register_heif_opener()
    return True


def _selfie_formats() -> tuple[str, ...]:
    return (*_SELFIE_FORMATS, "HEIF") if heic_supported() else _SELFIE_FORMATS


def _accepted_formats_phrase() -> str:
    return "JPEG, PNG, WebP or HEIC" if heic_supported() else "JPEG, PNG or WebP"


# What chat platforms call the formats a selfie may arrive in.
_SELFIE_CONTENT_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp"}
_HEIF_CONTENT_TYPES = {"image/heic", "image/heif", "image/heic-sequence", "image/heif-sequence"}


def check_upload(content_type: str | None, size: int, *, max_bytes: int) -> None:
    """Refuse an upload from what the platform says about it, before downloading it.

    The platform's word is only a first filter (the bytes are checked again by
    `sanitise_selfie`); an upload it says nothing about is let through to that check.
    """
    if content_type:
        accepted = _SELFIE_CONTENT_TYPES | (_HEIF_CONTENT_TYPES if heic_supported() else set())
        if content_type.split(";")[0].strip().lower() not in accepted:
            raise ImageRejected(_selfie_wording().not_image, reason="not_image")
    _check_size(size, max_bytes)


def sanitise_selfie(
    data: bytes,
    *,
    max_bytes: int = 10 * _MB,
    max_pixels: int = 40_000_000,
    max_side: int = 1536,
    min_side: int = 128,
) -> SanitisedImage:
    """Check an uploaded selfie and re-encode it as a clean JPEG.

    Caps bytes before parsing and pixels before decoding, decodes only allow-listed
    formats, keeps the first frame, applies the EXIF orientation, converts to sRGB
    (alpha flattened onto white), downscales to `max_side` and drops all metadata.
    """
    _check_byte_size(data, max_bytes)
    wording = _selfie_wording()
    image = _open(data, _selfie_formats(), wording, max_pixels)
    width, height = image.size
    _check_pixels(width, height, max_pixels, wording)
    if min(width, height) < min_side:
        raise ImageRejected(
            f"That image is too small ({width}×{height}): "
            f"send a selfie at least {min_side} pixels on each side",
            reason="too_small",
        )
    if image.format == "JPEG" and max(width, height) > max_side:
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale, never below the target size.
        scale = max_side / max(width, height)
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    _load(image, wording)
    image = _to_srgb_rgb(_exif_transpose(image))
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return SanitisedImage(
        data=_encode_jpeg(image),
        content_type="image/jpeg",
        width=image.width,
        height=image.height,
    )


def inspect_output(data: bytes, *, max_pixels: int = 40_000_000) -> ImageInfo:
    """Check that a provider's bytes are one complete JPEG, PNG or WebP image.

    The whole stream is decoded; JPEGs are decoded at 1/8 scale, which still reads
    every entropy-coded byte (so truncation is caught) but skips most of the IDCT.
    """
    wording = _OUTPUT_WORDING
    if not data:
        raise ImageRejected(wording.not_image, reason="not_image")
    image = _open(data, tuple(_OUTPUT_FORMATS), wording, max_pixels)
    width, height = image.size
    image_format = image.format or ""
    _check_pixels(width, height, max_pixels, wording)
    if image_format == "JPEG":
        image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
    _load(image, wording)
    # Pillow accepts a PNG that stops after its last IDAT; a complete one ends in IEND.
    if image_format == "PNG" and _PNG_IEND not in data[-4096:]:
        raise ImageRejected(wording.damaged, reason="damaged")
    content_type, extension = _OUTPUT_FORMATS[image_format]
    return ImageInfo(
        format=image_format,
        content_type=content_type,
        extension=extension,
        width=width,
        height=height,
    )


def _check_byte_size(data: bytes, max_bytes: int) -> None:
    if not data:
        raise ImageRejected(_selfie_wording().not_image, reason="not_image")
    _check_size(len(data), max_bytes)


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        size_mb = math.ceil(size / _MB * 10) / 10
        raise ImageRejected(
            f"That image is too large ({size_mb:.1f} MB): send one under {max_bytes / _MB:g} MB",
            reason="too_large",
        )


def _check_pixels(width: int, height: int, max_pixels: int, wording: _Wording) -> None:
    if width * height > max_pixels:
        size = f"{width}×{height} pixels"
        raise ImageRejected(_too_big(wording, size, max_pixels), reason="too_big")


def _too_big(wording: _Wording, size: str, max_pixels: int) -> str:
    return wording.too_big.format(size=size, limit=f"{max_pixels / 1e6:g}")


def _open(data: bytes, formats: Sequence[str], wording: _Wording, max_pixels: int) -> Image.Image:
    """Parse the header only, with the given format plugins and no others."""
    try:
        return Image.open(io.BytesIO(data), formats=list(formats))
    except UnidentifiedImageError:
        if _sniff_format(data) in formats:  # ours by its signature, but unreadable
            raise ImageRejected(wording.damaged, reason="damaged") from None
        refused = _refused_format_name(data)
        if refused is None or wording is _OUTPUT_WORDING:
            raise ImageRejected(wording.not_image, reason="not_image") from None
        raise ImageRejected(
            f"{refused} images aren't supported: send a {_accepted_formats_phrase()} selfie",
            reason="unsupported_format",
        ) from None
    except Image.DecompressionBombError:
        # Pillow's own ceiling (2 × MAX_IMAGE_PIXELS) tripped while reading the header.
        ceiling = 2 * (Image.MAX_IMAGE_PIXELS or 0)
        size = f"over {ceiling / 1e6:.0f} megapixels"
        raise ImageRejected(_too_big(wording, size, max_pixels), reason="too_big") from None
    except Exception as exc:  # a hostile header can break a parser in many ways
        log.info("image header rejected: %s: %s", type(exc).__name__, exc)
        raise ImageRejected(wording.damaged, reason="damaged") from None


def _load(image: Image.Image, wording: _Wording) -> None:
    try:
        image.load()
    except Exception as exc:  # truncated data, bad CRCs, corrupt entropy coding...
        log.info("image decode failed: %s: %s", type(exc).__name__, exc)
        raise ImageRejected(wording.damaged, reason="damaged") from None


def _sniff_format(data: bytes) -> str | None:
    """The allow-listed format a file's signature claims, if any."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[4:8] == b"ftyp" and data[8:12] in _HEIF_BRANDS:
        return "HEIF"
    return None


def _refused_format_name(data: bytes) -> str | None:
    for magic, name in _REFUSED_MAGIC.items():
        if data.startswith(magic):
            return name
    return None


def _exif_transpose(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except Exception as exc:  # malformed EXIF: keep the pixels as they are
        log.info("ignoring unreadable EXIF: %s: %s", type(exc).__name__, exc)
        return image


def _to_srgb_rgb(image: Image.Image) -> Image.Image:
    """Return an RGB image in sRGB, alpha flattened onto white."""
    icc_profile = image.info.get("icc_profile")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, _WHITE)
        image.paste(rgba, mask=rgba.getchannel("A"))
    elif image.mode not in ("RGB", "CMYK", "L"):
        image = image.convert("RGB")
    if icc_profile:
        image = _icc_to_srgb(image, icc_profile)
    return image if image.mode == "RGB" else image.convert("RGB")


def _icc_to_srgb(image: Image.Image, icc_profile: bytes) -> Image.Image:
    try:
        from PIL import ImageCms

        source = ImageCms.ImageCmsProfile(io.BytesIO(icc_profile))
        converted = ImageCms.profileToProfile(image, source, _srgb_profile(), outputMode="RGB")
    except Exception as exc:  # unusable or mismatched profile: keep the raw values
        log.info("ignoring unusable ICC profile: %s: %s", type(exc).__name__, exc)
        return image
    return converted if converted is not None else image


@functools.cache
def _srgb_profile() -> ImageCms.ImageCmsProfile:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def fit_within(data: bytes, content_type: str, max_bytes: int) -> tuple[bytes, str] | None:
    """One of our own images made to fit a platform's upload limit: as it is if it fits, else
    re-encoded as JPEG, smaller step by step. Returns the bytes and their content type, or
    None if even a small version does not fit."""
    if len(data) <= max_bytes:
        return data, content_type
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = _to_srgb_rgb(opened).copy()
    while min(image.size) >= 64:
        for quality in (90, 80, 70):
            out = io.BytesIO()
            image.save(out, "JPEG", quality=quality)
            if out.tell() <= max_bytes:
                return out.getvalue(), "image/jpeg"
        image = image.resize(
            (image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.LANCZOS
        )
    return None


def _encode_jpeg(image: Image.Image) -> bytes:
    # Pillow's JPEG encoder falls back to image.info for some fields (the comment),
    # so clear it: nothing from the upload may reach the output.
    image.info = {}
    out = io.BytesIO()
    image.save(out, "JPEG", quality=_JPEG_QUALITY)
    return out.getvalue()
