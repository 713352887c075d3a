"""Hostile images are refused from their structure and declared size, before any decoder
works on them (issue 14, items 1-3, 7, 8 and the pose image's wording)."""

from __future__ import annotations

import functools
import io
import struct
import warnings
import zlib

import pytest
from PIL import Image

from bot.images import ImageRejected, sanitise_selfie
from bot.images.budget import DEFAULT_BUDGET, estimate
from bot.images.sanitise import inspect_output
from bot.images.structure import Layout, scan
from tests import hostile


def rejection(data: bytes, **limits: object) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        sanitise_selfie(data, **limits)  # type: ignore[arg-type]
    return caught.value


@functools.cache
def rgba16_png() -> bytes:
    return hostile.rgba16_png()


# --- item 1: the scan bomb -------------------------------------------------------------


def test_scan_bomb_is_refused_by_its_scan_count() -> None:
    bomb = hostile.scan_bomb(2000)
    assert len(bomb) < 200_000
    error = rejection(bomb)
    assert error.reason == "odd_structure"
    assert str(error) == (
        "That image file is built oddly (over 40 scans): save it again as a plain JPEG, PNG or "
        "WebP and send it again"
    )
    with pytest.raises(ImageRejected, match="over 40 scans"):
        inspect_output(bomb)


def test_a_large_progressive_jpeg_may_have_fewer_scans() -> None:
    # 25 MP: 19 passes over its coefficients at most (480 MP-scans), 40 only up to 12 MP.
    error = rejection(hostile.scan_bomb(20, (5000, 5000)))
    assert error.reason == "odd_structure"
    assert "(over 19 scans)" in str(error)


def test_an_ordinary_progressive_jpeg_is_accepted() -> None:
    result = sanitise_selfie(hostile.flat_progressive_jpeg((600, 800)))
    assert (result.width, result.height) == (600, 800)
    # Up to the limit, scans are decoded.
    assert sanitise_selfie(hostile.scan_bomb(40, (600, 800))).width == 600


# --- item 3: header amplifiers ---------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "detail"),
    [
        (hostile.jpeg_fill_bytes, "over 65,536 filler bytes"),
        (hostile.jpeg_comments, "over 256 metadata segments"),
        (hostile.jpeg_app15, "over 256 metadata segments"),
        (hostile.png_private_chunks, "over 256 extra chunks"),
    ],
    ids=["ff-fill", "com-segments", "app15-segments", "png-private-chunks"],
)
def test_header_amplifiers_are_refused_before_pillow_parses_them(make, detail: str) -> None:  # type: ignore[no-untyped-def]
    data = make()
    assert len(data) <= 10 * 1024 * 1024  # each passes the byte cap
    error = rejection(data)
    assert error.reason == "odd_structure"
    assert f"({detail})" in str(error)


def test_a_jpeg_with_the_usual_metadata_passes_the_walk() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Camera"
    out = io.BytesIO()
    Image.new("RGB", (300, 300), "tan").save(out, "JPEG", exif=exif, comment=b"hello")
    layout = scan(out.getvalue())
    assert layout is not None and (layout.width, layout.height) == (300, 300)


# --- item 2: memory amplification ------------------------------------------------------


def test_lossless_webp_declaring_6000x6000_is_refused_by_its_memory_cost() -> None:
    bomb = hostile.lossless_webp_bomb()
    assert len(bomb) == 34
    error = rejection(bomb)
    assert error.reason == "too_costly"
    assert str(error) == (
        "That image would take too much memory to process (6000×6000, lossless WebP with "
        "transparency): send one under 15.7 megapixels"
    )


def test_16_bit_rgba_png_is_refused_by_its_memory_cost() -> None:
    data = rgba16_png()
    assert len(data) < 300_000
    error = rejection(data)
    assert error.reason == "too_costly"
    assert "(6000×6000, 16-bit PNG with transparency)" in str(error)


def test_a_generator_output_is_held_to_the_budget_too() -> None:
    with pytest.raises(ImageRejected, match="too much memory to check") as caught:
        inspect_output(hostile.lossless_webp_bomb())
    assert caught.value.reason == "too_costly"


def test_the_budget_is_configurable() -> None:
    small = io.BytesIO()
    Image.new("RGBA", (1000, 1000), (1, 2, 3, 4)).save(small, "PNG")
    assert sanitise_selfie(small.getvalue()).width == 1000
    error = rejection(small.getvalue(), memory_budget=4 * 1024 * 1024)
    assert error.reason == "too_costly"


@pytest.mark.parametrize(
    "layout",
    [
        Layout("JPEG", 7746, 5164, 3, 8, coefficients_per_pixel=1.5),  # 40 MP baseline
        Layout("JPEG", 7746, 5164, 3, 8, progressive=True, coefficients_per_pixel=1.5),
        Layout("PNG", 6000, 4000, 4, 8, alpha=True),  # 24 MP with transparency
        Layout("PNG", 7746, 5164, 3, 8),  # 40 MP RGB
        Layout("WEBP", 4000, 3000, 3, 8),  # a 12 MP phone photo
        Layout("HEIF", 4032, 3024, 3, 10),  # a 12 MP iPhone HEIC
    ],
    ids=["jpeg-40mp", "progressive-40mp", "png-rgba-24mp", "png-rgb-40mp", "webp-12mp", "heic"],
)
def test_ordinary_large_photos_fit_the_default_budget(layout: Layout) -> None:
    reduction = 4 if layout.format == "JPEG" else 1  # sanitise decodes big JPEGs shrunk
    assert estimate(layout, reduction=reduction) <= DEFAULT_BUDGET


# --- item 7: the shorter side is checked once shrunk -----------------------------------


def test_extreme_aspect_ratio_is_refused() -> None:
    error = rejection(hostile.long_thin_png())
    assert error.reason == "too_narrow"
    assert str(error) == (
        "That image is too long and narrow (128×312500): send a selfie at most 12 times as "
        "long as it is wide"
    )


def test_a_narrow_image_that_would_shrink_below_the_minimum_is_refused() -> None:
    out = io.BytesIO()
    Image.new("RGB", (130, 3000), "tan").save(out, "PNG")  # 1536 long: 67 wide
    assert rejection(out.getvalue()).reason == "too_narrow"
    Image.new("RGB", (130, 1500), "tan").save(out := io.BytesIO(), "PNG")
    assert sanitise_selfie(out.getvalue()).width == 130


# --- item 8: no warning from Pillow before our refusal ---------------------------------


def test_no_decompression_bomb_warning_precedes_the_refusal() -> None:
    ihdr = struct.pack(">IIBBBBB", 10_000, 10_000, 8, 2, 0, 0, 0)  # past Pillow's 89 MP
    data = (
        b"\x89PNG\r\n\x1a\n"
        + hostile.png_chunk(b"IHDR", ihdr)
        + hostile.png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        error = rejection(data)
    assert error.reason == "too_big"
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


# --- item 14: a pose image is not a selfie ---------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"not an image at all", hostile.lossless_webp_bomb(), b"GIF89a" + b"\0" * 40],
    ids=["text", "memory-bomb", "gif"],
)
def test_a_bad_pose_image_is_not_called_a_selfie(data: bytes) -> None:
    error = rejection(data, subject="pose image")
    assert "selfie" not in str(error)
    if error.reason in ("not_image", "unsupported_format"):
        assert str(error).endswith("pose image")


def test_a_narrow_pose_image_is_named_as_such() -> None:
    error = rejection(hostile.long_thin_png(128, 20_000), subject="pose image")
    assert "send a pose image at most 12 times" in str(error)
