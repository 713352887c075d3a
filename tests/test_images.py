"""bot.images: selfie sanitising and provider-output inspection, with images made here."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import ExifTags, Image, ImageCms

from bot.images import (
    ImageInfo,
    ImageRejected,
    SanitisedImage,
    heic_supported,
    inspect_output,
    sanitise_selfie,
)

MB = 1024 * 1024
FORMATS_PHRASE = "JPEG, PNG, WebP or HEIC" if heic_supported() else "JPEG, PNG or WebP"


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def photo(size: tuple[int, int] = (300, 400), mode: str = "RGB") -> Image.Image:
    """A non-uniform picture, so encoders produce realistic entropy-coded data."""
    picture = Image.effect_mandelbrot(size, (-2.0, -1.5, 1.0, 1.5), 60)
    return Image.merge("RGB", (picture, picture.rotate(90, expand=False), picture)).convert(mode)


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def png_header(width: int, height: int) -> bytes:
    """A PNG signature and IHDR claiming any size, without the pixels."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body)
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


_FUZZ_SEED = encode(photo((160, 160)), "JPEG", quality=60)


def rejection(data: bytes, **limits: int) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        sanitise_selfie(data, **limits)
    return caught.value


# --- sanitise_selfie: rejections -------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, this is not an image", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n"],
    ids=["empty", "text", "pdf"],
)
def test_non_images_are_rejected(data: bytes) -> None:
    error = rejection(data)
    assert str(error) == f"That file isn't an image: send a {FORMATS_PHRASE} selfie"
    assert error.reason == "not_image"


def test_gif_is_refused_by_name() -> None:
    error = rejection(encode(photo(), "GIF"))
    assert str(error) == f"GIF images aren't supported: send a {FORMATS_PHRASE} selfie"
    assert error.reason == "unsupported_format"


def test_truncated_jpeg_is_damaged() -> None:
    data = encode(photo(), "JPEG")
    error = rejection(data[: len(data) // 2])
    assert str(error) == "That image is damaged or truncated: send it again"
    assert error.reason == "damaged"


def test_oversized_bytes_are_refused_before_decoding() -> None:
    error = rejection(bytes(int(12.3 * MB)))
    assert str(error) == "That image is too large (12.3 MB): send one under 10 MB"
    assert error.reason == "too_large"


def test_byte_cap_is_configurable() -> None:
    assert str(rejection(bytes(2 * MB), max_bytes=MB)) == (
        "That image is too large (2.0 MB): send one under 1 MB"
    )
    data = encode(photo(), "PNG")
    assert sanitise_selfie(data, max_bytes=len(data)).width == 300


def test_pixel_cap_is_checked_from_the_header() -> None:
    # 8000 × 8000 × 3 bytes would be 192 MB decoded; the header alone must settle it.
    error = rejection(png_header(8000, 8000))
    assert str(error) == ("That image is too big (8000×8000 pixels): send one under 40 megapixels")
    assert error.reason == "too_big"


def test_decompression_bomb_header_is_refused() -> None:
    # Far past Pillow's own ceiling: the structure walk reads the size before Pillow does.
    error = rejection(png_header(100_000, 100_000))
    assert str(error) == (
        "That image is too big (100000×100000 pixels): send one under 40 megapixels"
    )
    assert error.reason == "too_big"


def test_tiny_image_is_refused() -> None:
    error = rejection(encode(photo((40, 40)), "PNG"))
    assert str(error) == (
        "That image is too small (40×40): send a selfie at least 128 pixels on each side"
    )
    assert error.reason == "too_small"


@pytest.mark.parametrize(
    "data",
    [
        png_header(300, 300)[:29] + b"\0\0\0\0" + png_header(300, 300)[33:],  # bad IHDR CRC
        b"\xff\xd8\xff" + b"\x00" * 100,  # a JPEG signature and nothing usable
    ],
    ids=["png-bad-crc", "jpeg-garbage"],
)
def test_unreadable_file_of_an_allowed_format_is_damaged(data: bytes) -> None:
    error = rejection(data)
    assert str(error) == "That image is damaged or truncated: send it again"
    assert error.reason == "damaged"


# --- sanitise_selfie: what comes out ---------------------------------------------------


def test_output_is_a_clean_jpeg() -> None:
    result = sanitise_selfie(encode(photo((300, 400)), "PNG"))
    assert isinstance(result, SanitisedImage)
    assert result.content_type == "image/jpeg"
    assert (result.width, result.height) == (300, 400)
    image = decode(result.data)
    assert image.format == "JPEG"
    assert image.mode == "RGB"
    assert image.size == (300, 400)


def test_exif_orientation_is_applied() -> None:
    # Left half red, right half blue; orientation 6 means "rotate 90° clockwise to view".
    source = Image.new("RGB", (300, 200), (0, 0, 255))
    source.paste((255, 0, 0), (0, 0, 150, 200))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    result = sanitise_selfie(encode(source, "JPEG", exif=exif))
    assert (result.width, result.height) == (200, 300)
    image = decode(result.data).convert("RGB")
    red, _, blue = image.getpixel((100, 20))
    assert red > 200 and blue < 60  # the left half is now on top
    assert ExifTags.Base.Orientation not in image.getexif()


def test_gps_and_other_metadata_are_stripped() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "SpyCamCorp"
    gps = exif.get_ifd(ExifTags.IFD.GPSInfo)
    gps[ExifTags.GPS.GPSLatitudeRef] = "N"
    gps[ExifTags.GPS.GPSLatitude] = (51.0, 30.0, 26.0)
    gps[ExifTags.GPS.GPSLongitudeRef] = "W"
    gps[ExifTags.GPS.GPSLongitude] = (0.0, 7.0, 39.0)
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    data = encode(photo(), "JPEG", exif=exif, icc_profile=srgb, comment=b"secret-comment")
    source = decode(data)
    assert source.getexif().get_ifd(ExifTags.IFD.GPSInfo)  # the input really carries GPS

    result = sanitise_selfie(data)
    image = decode(result.data)
    assert not image.getexif().get_ifd(ExifTags.IFD.GPSInfo)
    assert len(image.getexif()) == 0
    assert not {"exif", "icc_profile", "comment", "xmp"} & set(image.info)
    assert b"Exif" not in result.data
    assert b"SpyCamCorp" not in result.data
    assert b"secret-comment" not in result.data


def test_alpha_is_flattened_onto_white() -> None:
    source = Image.new("RGBA", (200, 200), (255, 0, 0, 0))
    source.paste((0, 0, 0, 255), (0, 0, 100, 200))
    image = decode(sanitise_selfie(encode(source, "PNG")).data)
    assert image.mode == "RGB"
    assert all(channel > 245 for channel in image.getpixel((150, 100)))
    assert all(channel < 10 for channel in image.getpixel((50, 100)))


def test_palette_with_transparency_is_flattened() -> None:
    source = Image.new("RGBA", (200, 200), (0, 255, 0, 0)).convert("P")
    image = decode(sanitise_selfie(encode(source, "PNG", transparency=0)).data)
    assert all(channel > 245 for channel in image.getpixel((100, 100)))


def test_cmyk_jpeg_becomes_rgb() -> None:
    image = decode(sanitise_selfie(encode(photo(mode="CMYK"), "JPEG")).data)
    assert image.mode == "RGB"


@pytest.mark.parametrize(
    ("size", "expected"),
    [((4000, 3000), (1536, 1152)), ((1000, 3000), (512, 1536)), ((1536, 800), (1536, 800))],
)
def test_longest_side_is_capped(size: tuple[int, int], expected: tuple[int, int]) -> None:
    result = sanitise_selfie(encode(photo(size), "JPEG"))
    assert (result.width, result.height) == expected
    assert decode(result.data).size == expected


def test_max_side_is_configurable() -> None:
    result = sanitise_selfie(encode(photo((600, 300)), "WEBP"), max_side=300)
    assert (result.width, result.height) == (300, 150)


def test_animated_image_keeps_its_first_frame() -> None:
    frames = [Image.new("RGB", (200, 200), colour) for colour in ((0, 200, 0), (200, 0, 0))]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    red, green, _ = decode(sanitise_selfie(data).data).getpixel((100, 100))
    assert green > 150 and red < 50


@pytest.mark.skipif(not heic_supported(), reason="pillow-heif is not installed")
def test_heic_is_accepted() -> None:
    result = sanitise_selfie(encode(photo((300, 400)), "HEIF"))
    assert (result.width, result.height) == (300, 400)
    assert decode(result.data).format == "JPEG"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_corrupted_jpeg_never_escapes_as_another_error(data: st.DataObject) -> None:
    blob = bytearray(_FUZZ_SEED)
    for _ in range(data.draw(st.integers(1, 8))):
        blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(1, len(blob)))
    try:
        result = sanitise_selfie(bytes(blob[:cut]))
    except ImageRejected:
        return
    assert decode(result.data).format == "JPEG"


# --- inspect_output --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "content_type", "extension"),
    [("JPEG", "image/jpeg", "jpg"), ("PNG", "image/png", "png"), ("WEBP", "image/webp", "webp")],
)
def test_inspect_output_accepts_provider_formats(
    fmt: str, content_type: str, extension: str
) -> None:
    info = inspect_output(encode(photo((512, 768)), fmt))
    assert info == ImageInfo(
        format=fmt, content_type=content_type, extension=extension, width=512, height=768
    )


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
@pytest.mark.parametrize("cut", [2, 12, 500])
def test_inspect_output_rejects_truncated_data(fmt: str, cut: int) -> None:
    data = encode(photo((512, 768)), fmt)
    with pytest.raises(ImageRejected, match="damaged or truncated") as caught:
        inspect_output(data[:-cut])
    assert caught.value.reason == "damaged"


@pytest.mark.parametrize(
    "data",
    [b"", b"<html>502 Bad Gateway</html>", encode(photo(), "GIF"), encode(photo(), "BMP")],
    ids=["empty", "html", "gif", "bmp"],
)
def test_inspect_output_rejects_non_images(data: bytes) -> None:
    with pytest.raises(ImageRejected, match="isn't a JPEG, PNG or WebP image") as caught:
        inspect_output(data)
    assert caught.value.reason == "not_image"


@pytest.mark.skipif(not heic_supported(), reason="pillow-heif is not installed")
def test_inspect_output_does_not_take_heic() -> None:
    with pytest.raises(ImageRejected, match="isn't a JPEG, PNG or WebP image"):
        inspect_output(encode(photo(), "HEIF"))


def test_inspect_output_caps_pixels_from_the_header() -> None:
    with pytest.raises(ImageRejected, match=r"too big \(8000×8000 pixels; limit 40 megapixels\)"):
        inspect_output(png_header(8000, 8000))
