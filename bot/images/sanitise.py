"""Hostile-input image handling: selfies and pose images in, provider outputs back.

Everything here is synchronous Pillow work, bounded before it starts: the file's structure is
walked and its decode memory estimated from its header before any decoder runs. The service
runs these functions in its decode workers (`bot.images.workers`), which add a time limit and
a limit on how many run at once. Every failure a user or a provider can cause surfaces as
`ImageRejected`, whose `shown()` text can be shown to the user as it is (in their language:
the workers do not know it, so the message travels untranslated, see `bot.images.errors`).
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image, ImageOps, UnidentifiedImageError

from bot.i18n import N_
from bot.images.budget import DEFAULT_BUDGET, estimate, jpeg_reduction
from bot.images.errors import OUTPUT_WORDING, Figure, ImageRejected, Phrase, Wording, figure
from bot.images.structure import Layout, OddStructure, scan

if TYPE_CHECKING:
    from PIL import ImageCms

__all__ = [
    "ImageInfo",
    "SanitisedImage",
    "check_upload",
    "fit_within",
    "heic_supported",
    "inspect_output",
    "sanitise_selfie",
    "warm_up",
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
# Modes Pillow resamples as they are; others are converted to RGB(A) first.
_RESAMPLED_AS_IS = {"RGB", "RGBA", "L", "LA", "CMYK"}


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


def _accepted_formats() -> Phrase:
    if heic_supported():
        return Phrase.of(N_("JPEG, PNG, WebP or HEIC"))
    return Phrase.of(N_("JPEG, PNG or WebP"))


def _not_image(wording: Wording) -> ImageRejected:
    return ImageRejected(wording.not_image, reason="not_image", formats=_accepted_formats())


# What chat platforms call the formats a selfie may arrive in.
_SELFIE_CONTENT_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp"}
_HEIF_CONTENT_TYPES = {"image/heic", "image/heif", "image/heic-sequence", "image/heif-sequence"}


def check_upload(
    content_type: str | None, size: int, *, max_bytes: int, subject: str = "selfie"
) -> None:
    """Refuse an upload (a selfie, or what `subject` names) from what the platform says about
    it, before downloading it.

    The platform's word is only a first filter (the bytes are checked again by
    `sanitise_selfie`); an upload it says nothing about is let through to that check.
    """
    if content_type:
        accepted = _SELFIE_CONTENT_TYPES | (_HEIF_CONTENT_TYPES if heic_supported() else set())
        if content_type.split(";")[0].strip().lower() not in accepted:
            raise _not_image(Wording.upload(subject))
    _check_size(size, max_bytes)


def sanitise_selfie(
    data: bytes,
    *,
    max_bytes: int = 10 * _MB,
    max_pixels: int = 40_000_000,
    max_side: int = 1536,
    min_side: int = 128,
    memory_budget: int = DEFAULT_BUDGET,
    subject: str = "selfie",
) -> SanitisedImage:
    """Check an uploaded selfie (or pose image: `subject` names it in messages) and re-encode
    it as a clean JPEG.

    Caps bytes before parsing; walks the structure, caps pixels, shape and decode memory
    before decoding; decodes only allow-listed formats, keeps the first frame, downscales to
    `max_side`, applies the EXIF orientation, converts to sRGB (alpha flattened onto white)
    and drops all metadata.
    """
    wording = Wording.upload(subject)
    if not data:
        raise _not_image(wording)
    _check_size(len(data), max_bytes)

    def reduction(width: int, height: int) -> int:
        longest = max(width, height)
        if longest <= max_side:
            return 1
        scale = max_side / longest
        return jpeg_reduction(width, height, (math.ceil(width * scale), math.ceil(height * scale)))

    image = _open(
        data, _selfie_formats(), wording, max_pixels, memory_budget, reduction, resized=True
    )
    width, height = image.size
    _check_shape(width, height, max_side, min_side, wording)
    if image.format == "JPEG" and (factor := reduction(width, height)) > 1:
        # libjpeg decodes at 1/2, 1/4 or 1/8 scale, never below the target size.
        image.draft("RGB", (-(-width // factor), -(-height // factor)))
    _load(image, wording)
    image = _resample_ready(image)
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    _check_shape(image.width, image.height, max_side, min_side, wording, original=(width, height))
    image = _to_srgb_rgb(_exif_transpose(image))
    return SanitisedImage(
        data=_encode_jpeg(image),
        content_type="image/jpeg",
        width=image.width,
        height=image.height,
    )


def inspect_output(
    data: bytes, *, max_pixels: int = 40_000_000, memory_budget: int = DEFAULT_BUDGET
) -> ImageInfo:
    """Check that a provider's bytes are one complete JPEG, PNG or WebP image.

    The whole stream is decoded; JPEGs are decoded at 1/8 scale, which still reads
    every entropy-coded byte (so truncation is caught) but skips most of the IDCT.
    """
    wording = OUTPUT_WORDING
    if not data:
        raise _not_image(wording)
    image = _open(
        data, tuple(_OUTPUT_FORMATS), wording, max_pixels, memory_budget, _eighth, resized=False
    )
    width, height = image.size
    image_format = image.format or ""
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


def warm_up() -> None:
    """Run each kind of work once on a small generated image, so that a worker's first real
    call does not also pay for loading Pillow's plugins and setting up its codecs."""
    image = Image.new("RGB", (160, 160), _WHITE)
    for image_format in ("JPEG", "PNG", "WEBP"):
        # A Pillow built without a codec has nothing to warm: the real calls say what it lacks.
        with contextlib.suppress(Exception):
            out = io.BytesIO()
            image.save(out, image_format)
            data = out.getvalue()
            sanitise_selfie(data)
            inspect_output(data)
    with contextlib.suppress(Exception):  # no colour management here: no profile to convert to
        _srgb_profile()


def _eighth(width: int, height: int) -> int:
    return jpeg_reduction(width, height, (max(1, width // 8), max(1, height // 8)))


def _check_size(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        size_mb = math.ceil(size / _MB * 10) / 10
        raise ImageRejected(
            N_("That image is too large ({size} MB): send one under {limit} MB"),
            reason="too_large",
            size=Figure(size_mb, 1),
            limit=figure(max_bytes / _MB),
        )


def _check_pixels(width: int, height: int, max_pixels: int, wording: Wording) -> None:
    if width * height > max_pixels:
        size = Phrase.of(N_("{size} pixels"), size=f"{width}×{height}")
        raise _too_big(wording, size, max_pixels)


def _too_big(wording: Wording, size: Phrase, max_pixels: int) -> ImageRejected:
    return ImageRejected(
        wording.too_big, reason="too_big", size=size, limit=figure(max_pixels / 1e6)
    )


def _check_budget(
    layout: Layout, budget: int, reduction: int, wording: Wording, *, resized: bool
) -> None:
    cost = estimate(layout, reduction=reduction, resized=resized)
    if cost <= budget:
        return
    # The size that would fit, at this format's cost per pixel.
    limit = math.floor(budget / cost * layout.width * layout.height / 1e5) / 10
    raise ImageRejected(
        wording.too_costly, reason="too_costly", size=layout.describe(), limit=figure(limit)
    )


def _check_shape(
    width: int,
    height: int,
    max_side: int,
    min_side: int,
    wording: Wording,
    *,
    original: tuple[int, int] | None = None,
) -> None:
    """The shorter side, before and once shrunk to `max_side`, must be at least `min_side`."""
    assert wording.too_small is not None and wording.too_narrow is not None
    if original is None and min(width, height) < min_side:
        raise ImageRejected(
            wording.too_small, reason="too_small", size=f"{width}×{height}", min=min_side
        )
    shrunk = min(width, height) * min(1.0, max_side / max(width, height))
    if original is not None:
        shrunk = min(width, height)
    if round(shrunk) < min_side:
        shown_width, shown_height = original or (width, height)
        raise ImageRejected(
            wording.too_narrow,
            reason="too_narrow",
            size=f"{shown_width}×{shown_height}",
            ratio=figure(max_side / min_side),
        )


def _open(
    data: bytes,
    formats: Sequence[str],
    wording: Wording,
    max_pixels: int,
    budget: int,
    reduction: Callable[[int, int], int],
    *,
    resized: bool,
) -> Image.Image:
    """Walk the structure and check size and memory from what it declares; then parse the
    header only, with the given format plugins and no others, and check again."""
    try:
        layout = scan(data)
    except OddStructure as exc:
        raise ImageRejected(
            wording.odd_structure, reason="odd_structure", detail=exc.phrase
        ) from None
    if layout is not None and layout.format in formats:
        _check_pixels(layout.width, layout.height, max_pixels, wording)
        factor = reduction(layout.width, layout.height) if layout.format == "JPEG" else 1
        _check_budget(layout, budget, factor, wording, resized=resized)
    image = _parse_header(data, formats, wording, max_pixels)
    width, height = image.size
    _check_pixels(width, height, max_pixels, wording)
    if layout is None or (layout.width, layout.height) != (width, height):
        # The walk found no size (or another one): judge by what the decoder will do.
        layout = _layout_of(image)
        factor = reduction(width, height) if layout.format == "JPEG" else 1
        _check_budget(layout, budget, factor, wording, resized=resized)
    return image


def _layout_of(image: Image.Image) -> Layout:
    bands = len(image.getbands())
    return Layout(
        format=image.format or "",
        width=image.width,
        height=image.height,
        channels=bands,
        bit_depth=16 if image.mode.startswith("I;16") else 8,
        alpha=image.has_transparency_data,
        palette=image.mode == "P",
        progressive=bool(image.info.get("progressive")),
        coefficients_per_pixel=float(bands),
    )


def _parse_header(
    data: bytes, formats: Sequence[str], wording: Wording, max_pixels: int
) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow warns (on stderr) before its own ceiling; ours is lower and comes first,
            # so a warning here means a size the walk could not read: refuse it as ours.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=list(formats))
    except UnidentifiedImageError:
        if _sniff_format(data) in formats:  # ours by its signature, but unreadable
            raise ImageRejected(wording.damaged, reason="damaged") from None
        refused = _refused_format_name(data)
        if refused is None or wording.unsupported is None:
            raise _not_image(wording) from None
        raise ImageRejected(
            wording.unsupported,
            reason="unsupported_format",
            name=refused,
            formats=_accepted_formats(),
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        megapixels = round((Image.MAX_IMAGE_PIXELS or 0) / 1e6)
        size = Phrase.of(N_("over {count} megapixels"), count=megapixels)
        raise _too_big(wording, size, max_pixels) from None
    except MemoryError:
        raise
    except Exception as exc:  # a hostile header can break a parser in many ways
        log.info("image header rejected: %s: %s", type(exc).__name__, exc)
        raise ImageRejected(wording.damaged, reason="damaged") from None


def _load(image: Image.Image, wording: Wording) -> None:
    try:
        image.load()
    except MemoryError:
        raise  # the decode workers answer this one
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


def _resample_ready(image: Image.Image) -> Image.Image:
    """Palettes, 1-bit and 16-bit images resample poorly (or not at all): make them RGB(A)."""
    if image.mode in _RESAMPLED_AS_IS:
        return image
    return image.convert("RGBA" if image.has_transparency_data else "RGB")


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


def fit_within(
    data: bytes, content_type: str, max_bytes: int, *, memory_budget: int = DEFAULT_BUDGET
) -> tuple[bytes, str] | None:
    """One of our own images made to fit a platform's upload limit: as it is if it fits, else
    re-encoded as JPEG, smaller step by step. Returns the bytes and their content type, or
    None if even a small version does not fit (or it cannot be read within the limits)."""
    if len(data) <= max_bytes:
        return data, content_type
    try:
        opened = _open(
            data,
            tuple(_OUTPUT_FORMATS),
            OUTPUT_WORDING,
            40_000_000,
            memory_budget,
            _one,
            resized=True,
        )
        _load(opened, OUTPUT_WORDING)
    except ImageRejected as exc:
        log.warning("cannot shrink an image of ours: %s", exc)
        return None
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


def _one(width: int, height: int) -> int:
    return 1


def _encode_jpeg(image: Image.Image) -> bytes:
    # Pillow's JPEG encoder falls back to image.info for some fields (the comment),
    # so clear it: nothing from the upload may reach the output.
    image.info = {}
    out = io.BytesIO()
    image.save(out, "JPEG", quality=_JPEG_QUALITY)
    return out.getvalue()
