"""The about-1-MP rule (backends/local/sizes.py) that SDXL's and FLUX.1 Kontext's pipelines
generate by, checked on the sizes it picks: no pipeline runs here."""

from __future__ import annotations

import pytest
from PIL import Image

from backends.local.sizes import cover, fit, working_size

# FLUX.1 Kontext's preferred resolutions (diffusers' PREFERRED_KONTEXT_RESOLUTIONS), a part.
KONTEXT = [(672, 1568), (752, 1392), (800, 1328), (880, 1184), (944, 1104), (1024, 1024)]
KONTEXT += [(h, w) for w, h in KONTEXT[:-1]]


@pytest.mark.parametrize(
    ("asked", "working"),
    [
        ((512, 768), (832, 1280)),  # ModelsLab's avatar default, 2:3
        ((768, 1024), (896, 1216)),  # 3:4
        ((512, 512), (1024, 1024)),
        ((576, 1024), (768, 1344)),  # 9:16
        ((768, 512), (1280, 832)),  # landscape
    ],
)
def test_sdxl_generates_at_about_one_megapixel_with_the_asked_aspect(
    asked: tuple[int, int], working: tuple[int, int]
) -> None:
    size = working_size(*asked, side=1024, multiple=64)
    assert size == working
    assert 0.9 <= size[0] * size[1] / 1024**2 <= 1.15
    assert abs(size[0] / size[1] / (asked[0] / asked[1]) - 1) < 0.03  # cropped off after
    assert size[0] % 64 == 0 and size[1] % 64 == 0


@pytest.mark.parametrize(
    ("asked", "bucket"),
    [
        ((1024, 1024), (1024, 1024)),
        ((2048, 2048), (1024, 1024)),  # generated at 1 MP and upscaled, not at 4 MP
        ((768, 1024), (880, 1184)),  # 3:4
        ((800, 1000), (944, 1104)),  # 4:5
        ((576, 1024), (752, 1392)),  # 9:16
        ((1920, 1080), (1392, 752)),  # 16:9
    ],
)
def test_kontext_generates_at_its_preferred_resolution_nearest_in_aspect(
    asked: tuple[int, int], bucket: tuple[int, int]
) -> None:
    assert working_size(*asked, side=1024, multiple=16, buckets=KONTEXT) == bucket


def test_a_smaller_model_side_scales_the_sizes_down() -> None:
    # The tiny test models' VAEs were "trained" at 64 px: the same rule, at their scale.
    assert working_size(512, 768, side=64, multiple=16) == (48, 80)
    assert working_size(2048, 2048, side=64, multiple=16, buckets=KONTEXT) == (64, 64)
    assert working_size(768, 1024, side=64, multiple=16, buckets=KONTEXT) == (48, 80)
    # Never below one multiple, however thin the aspect.
    assert working_size(64, 2048, side=64, multiple=64) == (64, 384)


@pytest.mark.parametrize("bad", [(0, 768), (512, 0), (-1, 5)])
def test_no_working_size_for_an_empty_image(bad: tuple[int, int]) -> None:
    with pytest.raises(ValueError):
        working_size(*bad, side=1024, multiple=64)


def test_fit_covers_and_centre_crops_to_the_exact_size() -> None:
    # A generated 832×1280 brought to the asked 512×768: scaled to cover, the extra cut evenly.
    image = Image.new("RGB", (832, 1280), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 832, 8))  # a band the crop cuts off at the top
    fitted = fit(image, (512, 768))
    assert fitted.size == (512, 768)
    assert fitted.getpixel((256, 0)) == (0, 0, 0)
    assert cover((832, 1280), (512, 768)) == ((512, 788), (0, 10))
    same = Image.new("RGB", (64, 96))
    assert fit(same, (64, 96)) is same
    assert fit(Image.new("RGB", (64, 64), (9, 9, 9)), (2048, 2048)).getpixel((1000, 1000)) == (
        9,
        9,
        9,
    )


def test_cover_moves_points_with_the_image() -> None:
    scaled, (left, top) = cover((100, 50), (40, 40))
    assert scaled == (80, 40) and (left, top) == (20, 0)


def test_the_crop_follows_a_focus_as_far_as_the_image_allows() -> None:
    # A landscape photo cropped to portrait around a point near its left edge: the crop starts
    # at the edge instead of the centre, and the point stays in the picture.
    assert cover((1920, 1080), (64, 128)) == ((228, 128), (82, 0))
    assert cover((1920, 1080), (64, 128), focus=(100.0, 540.0)) == ((228, 128), (0, 0))
    assert cover((1920, 1080), (64, 128), focus=(1100.0, 540.0)) == ((228, 128), (99, 0))
    image = Image.new("RGB", (1920, 1080), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 300, 1080))
    assert fit(image, (64, 128), focus=(100.0, 540.0)).getpixel((2, 64)) == (255, 255, 255)
    assert fit(image, (64, 128)).getpixel((2, 64)) == (0, 0, 0)
