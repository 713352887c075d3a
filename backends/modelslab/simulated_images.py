"""The simulator's stand-in for a generated headshot: the sender's own face on a studio backdrop.

Pure Pillow and cheap on purpose. A skin-tone mask over a small copy of the selfie finds the
face (the most face-like skin area: compact, upper middle, not a saturated orange jacket or a
beige wall). A head-and-shoulders window around it, of the output's aspect, is scaled to fill
the frame (the face ~36 % of its height, the eyes near the upper third), feathered into a
gradient backdrop whose tint depends on the operation and the seed, and encoded. Where the
window runs past the selfie's edge the photo fades into the backdrop. The same selfie, size,
seed and operation always give the same bytes.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
import random
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, Literal, TypeVar

from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageOps, UnidentifiedImageError

ImageFormat = Literal["png", "jpeg"]
Box = tuple[int, int, int, int]
K = TypeVar("K")
V = TypeVar("V")

MAX_INPUT_PIXELS = 50_000_000
PREPARED_MAX_SIDE = 1024
_DETECT_SIDE = 128
_MIN_SKIN_FRACTION = 0.004
_FACE_CACHE_SIZE = 32
_LAYER_CACHE_SIZE = 16
_LAYER_CACHE_MAX_PIXELS = 1_500_000
# Each side of a cached framing has this much extra room (a fraction of the output size),
# so every seed can shift the framing by a plain crop, without resampling again.
_MARGIN = 0.04
_TINTS_PER_OPERATION = 12
# Framing, in face heights: the frame's height and the room above the face's skin.
_FRAME_PER_FACE = 2.8
_HEADROOM = 0.62

# Backdrop base hues (0-1) and saturation per operation, so each operation looks recognisable.
_OPERATION_HUES: dict[str, tuple[float, float]] = {
    "headshot": (0.60, 0.22),
    "facegen": (0.08, 0.25),
    "avatar": (0.78, 0.30),
    "flux_headshot": (0.45, 0.18),
}


class NotAnImage(ValueError):
    """The bytes are not an image Pillow can decode (or one too large to try)."""


@dataclass(frozen=True)
class PreparedFace:
    """A decoded selfie, downscaled for speed, with the face box found in it."""

    digest: bytes
    image: Image.Image
    box: Box
    found: bool
    original_size: tuple[int, int]


def decode_image(data: bytes) -> Image.Image:
    """Decode, EXIF-transpose and convert to RGB; raise NotAnImage for anything else."""
    try:
        image = Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_INPUT_PIXELS:
            raise NotAnImage("the image has too many pixels")
        image.draft("RGB", (PREPARED_MAX_SIDE, PREPARED_MAX_SIDE))
        image.load()
        transposed = ImageOps.exif_transpose(image)
        return transposed.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, NotAnImage):
            raise
        raise NotAnImage("the data is not a decodable image") from exc
    except Image.DecompressionBombError as exc:
        raise NotAnImage("the image has too many pixels") from exc


class _Lru(Generic[K, V]):
    """A small thread-safe LRU map (renders run in worker threads)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._size:
                self._items.popitem(last=False)


_faces: _Lru[bytes, PreparedFace] = _Lru(_FACE_CACHE_SIZE)


def prepare_face(data: bytes) -> PreparedFace:
    """Decode a selfie and find its face; cached by content digest."""
    digest = hashlib.sha256(data).digest()
    cached = _faces.get(digest)
    if cached is not None:
        return cached
    image = decode_image(data)
    original_size = image.size
    image.thumbnail((PREPARED_MAX_SIDE, PREPARED_MAX_SIDE), Image.Resampling.BILINEAR)
    box, found = find_face(image)
    prepared = PreparedFace(
        digest=digest, image=image, box=box, found=found, original_size=original_size
    )
    _faces.put(digest, prepared)
    return prepared


def find_face(image: Image.Image) -> tuple[Box, bool]:
    """The face box in `image` coordinates and whether skin was found (else a guess).

    The box spans the face's skin, hairline to chin. Of the skin-coloured areas the one that
    looks most like a face wins: big, compact, about as tall as wide and in the upper middle.
    An area that spans the picture (a beige wall, say, that the face merges into) is no face:
    the skin test is then made stricter, step by step, until the face stands out.
    """
    small = image.copy()
    small.thumbnail((_DETECT_SIDE, _DETECT_SIDE), Image.Resampling.BILINEAR)
    width, height = small.size
    minimum = max(12, _MIN_SKIN_FRACTION * width * height)
    for strictness in range(_STRICTNESS_LEVELS):
        blobs = [
            _Blob.of(component, width, height)
            for component in _components(_skin_mask(small, strictness), width, height)
            if len(component) >= minimum
        ]
        if not blobs:
            break
        best = max(blobs, key=lambda blob: blob.score)
        if not best.spans_picture:
            sx, sy = image.width / width, image.height / height
            return (
                round((best.centre_x - best.half_w) * sx),
                round(best.top * sy),
                round((best.centre_x + best.half_w) * sx),
                round((best.top + best.face_h) * sy),
            ), True
    return _fallback_box(image.width, image.height), False


@dataclass(frozen=True)
class _Blob:
    """A skin area's face-shaped part (detection pixels) and how face-like it is."""

    centre_x: float
    half_w: float
    top: int
    face_h: float
    score: float
    spans_picture: bool  # touches three edges, or both sides: a wall, not a face

    @classmethod
    def of(cls, component: list[int], width: int, height: int) -> _Blob:
        rows: dict[int, list[int]] = {}
        for index in component:
            y, x = divmod(index, width)
            span = rows.get(y)
            if span is None:
                rows[y] = [x, x, 1]
            else:
                span[0] = min(span[0], x)
                span[1] = max(span[1], x)
                span[2] += 1
        top = min(rows)
        bottom = max(rows) + 1
        # The face's width: the widest row until the area has grown as tall as that width.
        # A face is widest about halfway down, a neck and shoulders start further down.
        face_w = 1
        for y in range(top, bottom):
            if y - top >= face_w:
                break
            span = rows.get(y)
            if span is not None:
                face_w = max(face_w, span[1] - span[0] + 1)
        # Faces are at most ~1.35x as tall as wide, measured from the top of the skin.
        face_h = min(bottom - top, 1.35 * face_w)
        face_rows = [(y, span) for y, span in rows.items() if y < top + face_h]
        in_face = sum(span[2] for _, span in face_rows)
        centre_x = sum((span[0] + span[1]) / 2 * span[2] for _, span in face_rows) / in_face
        centre_y = sum(y * span[2] for y, span in face_rows) / in_face
        fill = in_face / (face_w * face_h)  # an ellipse fills ~0.79 of its box
        aspect = face_h / face_w  # faces ~1.0-1.4; strips of arm or stripes are far off
        score = in_face * fill * fill * min(1.0, aspect / 0.8)
        # Faces sit in the upper middle of a selfie, above the torso, and rarely at its top.
        position = math.exp(-(((centre_x / width - 0.5) / 0.45) ** 2))
        position *= math.exp(-(((centre_y / height - 0.35) / 0.35) ** 2))
        score *= 0.25 + position
        if top == 0:
            score *= 0.6
        left = min(span[0] for span in rows.values())
        right = max(span[1] for span in rows.values()) + 1
        edges = (left == 0) + (right == width) + (top == 0) + (bottom == height)
        spans_picture = edges >= 3 or (left == 0 and right == width)
        return cls(centre_x, face_w / 2, top, face_h, score, spans_picture)


def _skin_mask(image: Image.Image, strictness: int = 0) -> bytes:
    """One byte per pixel, non-zero where the colour is skin-like.

    A YCbCr box plus an HSV check: skin is moderately saturated with a red-orange hue, which
    rejects saturated orange fabric, yellowish blond hair and grey walls. Each step of
    `strictness` asks for more red (Cr) and more saturation, to tell a face from a beige
    wall. An opening (erode, then dilate) cuts the thin bridges that join a face to things.
    """
    y, cb, cr = image.convert("YCbCr").split()
    hue, saturation, _ = image.convert("HSV").split()
    mask = y.point(_Y_OK)
    for channel, table in (
        (cb, _CB_OK),
        (cr, _window(136 + 5 * strictness, 170)),
        (hue, _HUE_OK),
        (saturation, _window(25 + 16 * strictness, 155)),
    ):
        mask = ImageChops.multiply(mask, channel.point(table))
    return mask.filter(ImageFilter.MinFilter(3)).filter(ImageFilter.MaxFilter(3)).tobytes()


def _window(low: int, high: int) -> list[int]:
    return [255 if low <= v <= high else 0 for v in range(256)]


_STRICTNESS_LEVELS = 4
_Y_OK = _window(50, 250)
_CB_OK = _window(80, 127)
# Hue on Pillow's 0-255 scale: red to orange-yellow (~0-33 degrees, and a little past red).
# Saturation (0-255) runs from ~10 % (pale skin in light) to ~60 % (not orange fabric).
_HUE_OK = [255 if v <= 23 or v >= 250 else 0 for v in range(256)]


def _components(mask: bytes, width: int, height: int) -> list[list[int]]:
    """Pixel indices of each 4-connected non-zero area of `mask`."""
    seen = bytearray(len(mask))
    found: list[list[int]] = []
    for start, value in enumerate(mask):
        if not value or seen[start]:
            continue
        seen[start] = 1
        component = [start]
        stack = [start]
        while stack:
            index = stack.pop()
            x = index % width
            neighbours = (
                index - width if index >= width else -1,
                index + width if index + width < len(mask) else -1,
                index - 1 if x > 0 else -1,
                index + 1 if x + 1 < width else -1,
            )
            for other in neighbours:
                if other >= 0 and mask[other] and not seen[other]:
                    seen[other] = 1
                    component.append(other)
                    stack.append(other)
        found.append(component)
    return found


def _fallback_box(width: int, height: int) -> Box:
    """Where a face usually is in a selfie: upper centre, about 40% of the width."""
    face_w = 0.4 * width
    face_h = min(1.3 * face_w, 0.5 * height)
    centre_x, centre_y = width / 2, 0.38 * height
    return (
        round(centre_x - face_w / 2),
        round(centre_y - face_h / 2),
        round(centre_x + face_w / 2),
        round(centre_y + face_h / 2),
    )


def natural_size(size: tuple[int, int], max_width: int, max_height: int) -> tuple[int, int]:
    """`size` scaled down (never up) to fit the caps, keeping the aspect; multiples of 8."""
    width, height = size
    scale = min(1.0, max_width / width, max_height / height)
    return (
        max(64, min(max_width, int(width * scale) // 8 * 8)),
        max(64, min(max_height, int(height * scale) // 8 * 8)),
    )


def render(
    face: PreparedFace, *, operation: str, width: int, height: int, seed: int, index: int = 0
) -> Image.Image:
    """One output: the head-and-shoulders crop feathered onto the operation's backdrop."""
    rng = random.Random(f"{operation}:{seed}:{index}")
    layer = _framing(face, width, height)
    dx = rng.randint(0, layer.person.width - width)
    dy = rng.randint(0, layer.person.height - height)
    box = (dx, dy, dx + width, dy + height)
    mask = _subject_mask(width, height)
    if layer.inside is not None:
        mask = ImageChops.multiply(mask, layer.inside.crop(box))
    tint = rng.randrange(_TINTS_PER_OPERATION)
    return Image.composite(layer.person.crop(box), _backdrop(width, height, operation, tint), mask)


@dataclass(frozen=True)
class _Framing:
    """The head-and-shoulders window, resampled once to the output size plus margins."""

    person: Image.Image
    inside: Image.Image | None  # where the window covers the selfie; None: all of it


_framings: _Lru[tuple[bytes, int, int], _Framing] = _Lru(_LAYER_CACHE_SIZE)


def _framing(face: PreparedFace, width: int, height: int) -> _Framing:
    key = (face.digest, width, height)
    cached = _framings.get(key)
    if cached is not None:
        return cached
    size = (width + 2 * round(_MARGIN * width), height + 2 * round(_MARGIN * height))
    window = _crop_window(face.box, size[0] / size[1], 1 + 2 * _MARGIN)
    inside = _inside_mask(face.image.size, window, *size)
    x0, y0, x1, y1 = window
    if inside is None:
        person = face.image.crop(window)
    else:
        # Off the selfie's edge the photo is faded out; fill it with the photo's mean colour
        # rather than black so no dark seam shows through the fade.
        mean = face.image.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))
        person = Image.new("RGB", (x1 - x0, y1 - y0), mean)
        person.paste(face.image, (-x0, -y0))
    framing = _Framing(person=person.resize(size, Image.Resampling.BILINEAR), inside=inside)
    if width * height <= _LAYER_CACHE_MAX_PIXELS:
        _framings.put(key, framing)
    return framing


def _crop_window(face_box: Box, aspect: float, scale: float) -> Box:
    """A head-and-shoulders window of the given aspect, centred on the face, the face high.

    `scale` widens it about its centre. The window may reach past the selfie's edges; the
    backdrop shows there.
    """
    left, top, right, bottom = face_box
    face_h = max(bottom - top, 1)
    # The face (hairline to chin) takes ~36 % of the height, with room above for the hair
    # and the eyes (~0.45 down the face) near the upper third (~0.38 down the frame).
    frame_h = face_h * _FRAME_PER_FACE
    centre_y = top - _HEADROOM * face_h + frame_h / 2
    window_h = frame_h * scale
    window_w = window_h * aspect
    x0 = (left + right) / 2 - window_w / 2
    y0 = centre_y - window_h / 2
    return (round(x0), round(y0), round(x0 + window_w), round(y0 + window_h))


def _inside_mask(size: tuple[int, int], window: Box, width: int, height: int) -> Image.Image | None:
    """A soft mask of where the window covers the selfie, or None where it covers it all.

    Where the window runs past the selfie's edge, the photo fades into the backdrop over a
    few percent of the frame instead of ending in a hard line.
    """
    x0, y0, x1, y1 = window
    if x0 >= 0 and y0 >= 0 and x1 <= size[0] and y1 <= size[1]:
        return None
    # Drawn small on a padded canvas (where the selfie goes on past the frame, so does the
    # mask), blurred, cropped and scaled up: the bilinear upscale smooths it further.
    small_w, small_h = max(width // 8, 8), max(height // 8, 8)
    feather = max(1.0, 0.035 * min(small_w, small_h))
    pad = round(3 * feather) + 1
    sx, sy = small_w / (x1 - x0), small_h / (y1 - y0)
    inset = round(2 * feather)
    inside = Image.new("L", (small_w + 2 * pad, small_h + 2 * pad), 0)
    inside.paste(
        255,
        (
            pad + round(-x0 * sx) + inset if x0 < 0 else 0,
            pad + round(-y0 * sy) + inset if y0 < 0 else 0,
            pad + round((size[0] - x0) * sx) - inset if x1 > size[0] else small_w + 2 * pad,
            pad + round((size[1] - y0) * sy) - inset if y1 > size[1] else small_h + 2 * pad,
        ),
    )
    blurred = inside.filter(ImageFilter.GaussianBlur(feather))
    blurred = blurred.crop((pad, pad, pad + small_w, pad + small_h))
    return blurred.resize((width, height), Image.Resampling.BILINEAR)


@lru_cache(maxsize=32)
def _subject_mask(width: int, height: int) -> Image.Image:
    """A feathered bust: an ellipse for the head and a wide rounded block for the shoulders."""
    small_w, small_h = max(width // 8, 8), max(height // 8, 8)
    mask = Image.new("L", (small_w, small_h), 0)
    draw = ImageDraw.Draw(mask)
    # Sized by the height too, so a wide frame shows a bust, not a wide slab of the selfie.
    centre = small_w / 2
    head = min(0.32 * small_w, 0.3 * small_h)
    shoulders = min(0.48 * small_w, 0.55 * small_h)
    draw.ellipse((centre - head, 0.02 * small_h, centre + head, 0.72 * small_h), fill=255)
    draw.rounded_rectangle(
        (centre - shoulders, 0.58 * small_h, centre + shoulders, 1.2 * small_h),
        radius=0.5 * shoulders,
        fill=255,
    )
    blurred = mask.filter(ImageFilter.GaussianBlur(max(small_w, small_h) / 28))
    return blurred.resize((width, height), Image.Resampling.BILINEAR)


@lru_cache(maxsize=64)
def _backdrop(width: int, height: int, operation: str, tint: int) -> Image.Image:
    """A studio backdrop: a light pool upper-centre, darker edges and a floor shadow."""
    base_hue, saturation = _OPERATION_HUES.get(operation, (0.6, 0.2))
    hue = (base_hue + (tint / _TINTS_PER_OPERATION - 0.5) * 0.16) % 1.0
    light = _rgb(hue, 0.72, saturation)
    dark = _rgb(hue, 0.22, saturation * 1.2)
    # radial_gradient is 0 at the centre and 255 at the edge of a 256x256 square; stretch it
    # past the frame so the corners fall off softly (a vignette) and centre it a little high.
    radial = Image.radial_gradient("L").resize(
        (round(width * 1.5), round(height * 1.5)), Image.Resampling.BILINEAR
    )
    left, top = round(width * 0.25), round(height * 0.33)
    shade = radial.crop((left, top, left + width, top + height))
    floor = Image.linear_gradient("L").resize((width, height), Image.Resampling.BILINEAR)
    floor = floor.point([max(0, v - 150) for v in range(256)])
    shade = Image.composite(Image.new("L", (width, height), 255), shade, floor)
    return ImageOps.colorize(shade, black=light, white=dark)


def _rgb(hue: float, lightness: float, saturation: float) -> tuple[int, int, int]:
    red, green, blue = colorsys.hls_to_rgb(hue, lightness, min(saturation, 1.0))
    return round(red * 255), round(green * 255), round(blue * 255)


def encode(image: Image.Image, image_format: ImageFormat) -> bytes:
    buffer = io.BytesIO()
    if image_format == "png":
        image.save(buffer, "PNG", compress_level=1)
    else:
        image.save(buffer, "JPEG", quality=88)
    return buffer.getvalue()


def make_images(
    selfie: bytes,
    *,
    operation: str,
    width: int,
    height: int,
    seed: int,
    count: int,
    image_format: ImageFormat,
) -> list[bytes]:
    """`count` encoded outputs for one job (CPU-bound: run it in a thread)."""
    face = prepare_face(selfie)
    return [
        encode(
            render(face, operation=operation, width=width, height=height, seed=seed, index=n),
            image_format,
        )
        for n in range(count)
    ]
