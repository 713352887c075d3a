"""The size a pipeline generates at, and the resize to the size the user asked for.

SDXL and FLUX.1 Kontext were trained at about one megapixel, and lose detail and identity far
from it: ModelsLab's avatar is at most 512 × 768 (0.39 MP), and flux_headshot may ask for
2048² (4 MP). So they generate at about `side`² pixels with the asked aspect ratio, where `side`
is the resolution the model was trained at (1024 for both: SDXL's UNet `sample_size` times its
VAE's scale, as diffusers reads it; FLUX's VAE `sample_size`), and the image is then resized to
the asked size (`fit`).

Importing this loads neither torch nor diffusers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

# The side the bucket lists below are given at.
REFERENCE_SIDE = 1024


def working_size(
    width: int,
    height: int,
    *,
    side: int,
    multiple: int,
    buckets: Sequence[tuple[int, int]] = (),
) -> tuple[int, int]:
    """The size to generate a `width` × `height` image at: about `side`² pixels, the aspect ratio
    of width:height, each side a multiple of `multiple`.

    With `buckets` (width, height pairs given at `REFERENCE_SIDE`, as FLUX.1 Kontext's preferred
    resolutions are), the bucket nearest in aspect ratio, scaled to `side`; without, the size
    computed from the area."""
    if width < 1 or height < 1 or side < 1 or multiple < 1:
        raise ValueError(f"no working size for {width}×{height} at side {side}, {multiple}")
    aspect = width / height
    if buckets:
        _, bucket_width, bucket_height = min((abs(aspect - w / h), w, h) for w, h in buckets)
        scale = side / REFERENCE_SIDE
        return _multiple(bucket_width * scale, multiple), _multiple(bucket_height * scale, multiple)
    # Of the sizes on the grid around the exact one, the truest to the aspect ratio (the output
    # is cropped to it), then the nearest to side² pixels.
    root = math.sqrt(aspect)
    candidates = [
        (w, h) for w in _around(side * root, multiple) for h in _around(side / root, multiple)
    ]
    return min(
        candidates,
        key=lambda size: (
            abs(math.log(size[0] / size[1] / aspect)),
            abs(size[0] * size[1] - side**2),
        ),
    )


def fit(
    image: Image.Image, size: tuple[int, int], focus: tuple[float, float] | None = None
) -> Image.Image:
    """`image` scaled to cover `size` and cropped to it (Lanczos): a generated image brought to
    the size the user asked for, or a photo to the size a pipeline works at. The crop is centred
    on `focus` (a point of `image`; its centre by default) as far as the image allows. An image
    of that size comes back as it is."""
    if image.size == size:
        return image
    scaled, (left, top) = cover(image.size, size, focus)
    resized = image.resize(scaled, Image.Resampling.LANCZOS)
    return resized.crop((left, top, left + size[0], top + size[1]))


def cover(
    source: tuple[int, int], size: tuple[int, int], focus: tuple[float, float] | None = None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """How `fit` maps a `source`-sized image onto `size`: the size it scales the image to, and
    the top-left corner of the crop (for moving points with the image)."""
    width, height = size
    scale = max(width / source[0], height / source[1])
    scaled = (max(width, round(source[0] * scale)), max(height, round(source[1] * scale)))
    if focus is None:
        return scaled, ((scaled[0] - width) // 2, (scaled[1] - height) // 2)
    left = round(focus[0] * scaled[0] / source[0] - width / 2)
    top = round(focus[1] * scaled[1] / source[1] - height / 2)
    return scaled, (min(max(left, 0), scaled[0] - width), min(max(top, 0), scaled[1] - height))


def _multiple(value: float, multiple: int) -> int:
    return max(multiple, round(value / multiple) * multiple)


def _around(value: float, multiple: int) -> set[int]:
    """The multiples just below and just above `value` (at least one multiple)."""
    below = math.floor(value / multiple) * multiple
    return {max(multiple, below), max(multiple, below + multiple)}
