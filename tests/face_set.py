"""The small set of test faces the face toolkit is measured on, built from packaged images.

Identities: the example selfie (examples/astronaut.jpg, NASA, public domain), Tom Hanks'
112×112 aligned crop and the six faces of the group photo t1.jpg, both read from the installed
insightface package (its sample images state no licence, so they are read from there, never
copied into this repository). No second photo of anyone ships, so "the same person" is each
face against variants of itself: mirrored, re-cropped, recompressed, relit.

Genuine pairs: each identity's face against each of its variants. Impostor pairs: every pair
of different identities. `tests/test_faces.py` asserts the errors this gives at dlib's 0.6;
`bench/identity.py` prints them.
"""

from __future__ import annotations

import asyncio
import importlib.util
import io
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

from bot.faces.checks import subject_embedding
from bot.faces.identity import Embedding, distance
from bot.faces.models import FaceModels
from bot.faces.rules import FaceRules

ROOT = Path(__file__).resolve().parent.parent
ASTRONAUT = ROOT / "examples" / "astronaut.jpg"

# The six faces dlib's HOG detector finds in t1.jpg at its own size (1280×886, no upsampling):
# left, top, right, bottom. Fixed here so the set does not depend on the detector under test.
T1_FACE_BOXES = (
    (65, 284, 169, 388),
    (734, 365, 837, 469),
    (1114, 284, 1217, 388),
    (452, 300, 577, 424),
    (275, 179, 362, 266),
    (883, 89, 987, 192),
)


def insightface_image(name: str) -> Path:
    """A sample image of the installed insightface package (located, not imported: slow)."""
    spec = importlib.util.find_spec("insightface")
    assert spec is not None and spec.submodule_search_locations, "insightface is not installed"
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / name


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def jpeg(image: Image.Image, quality: int = 92) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, "JPEG", quality=quality)
    return out.getvalue()


@cache
def t1() -> Image.Image:
    return Image.open(insightface_image("t1.jpg")).convert("RGB")


def t1_face(index: int) -> Image.Image:
    """One face of t1.jpg with a margin of one face width on every side."""
    left, top, right, bottom = T1_FACE_BOXES[index]
    size = right - left
    box = (left - size, top - size, right + size, bottom + size)
    photo = t1()
    clipped = (max(0, box[0]), max(0, box[1]), min(photo.width, box[2]), min(photo.height, box[3]))
    return photo.crop(clipped)


def identities() -> dict[str, Image.Image]:
    faces = {
        "astronaut": Image.open(ASTRONAUT).convert("RGB"),
        "tom_hanks": Image.open(insightface_image("Tom_Hanks_54745.png")).convert("RGB"),
    }
    faces.update({f"t1_face{n}": t1_face(n) for n in range(len(T1_FACE_BOXES))})
    return faces


def recrop(image: Image.Image) -> Image.Image:
    """A tighter framing, off centre: 15 % off the left and the bottom, 5 % off the others."""
    width, height = image.size
    return image.crop(
        (round(width * 0.15), round(height * 0.05), round(width * 0.95), round(height * 0.85))
    )


VARIANTS: dict[str, Callable[[Image.Image], bytes]] = {
    "mirror": lambda image: png(ImageOps.mirror(image)),
    "recrop": lambda image: png(recrop(image)),
    "jpeg_q30": lambda image: jpeg(image, quality=30),
    "darker_x0.6": lambda image: png(ImageEnhance.Brightness(image).enhance(0.6)),
    "brighter_x1.4": lambda image: png(ImageEnhance.Brightness(image).enhance(1.4)),
    "contrast_x1.5": lambda image: png(ImageEnhance.Contrast(image).enhance(1.5)),
    "contrast_x0.6": lambda image: png(ImageEnhance.Contrast(image).enhance(0.6)),
}


@dataclass(frozen=True)
class Pair:
    first: str
    second: str
    distance: float | None  # None: no face found in one of them


@dataclass(frozen=True)
class SetErrors:
    """Every pair measured, and the errors at `threshold`."""

    threshold: float
    genuine: list[Pair]
    impostor: list[Pair]

    @property
    def false_rejects(self) -> list[Pair]:
        return [p for p in self.genuine if p.distance is None or p.distance > self.threshold]

    @property
    def false_accepts(self) -> list[Pair]:
        return [p for p in self.impostor if p.distance is not None and p.distance <= self.threshold]


def measure(models: FaceModels, rules: FaceRules) -> SetErrors:
    """Embed every face and variant (largest face in each), and measure every pair."""
    originals = {name: png(image) for name, image in identities().items()}
    embeddings = {name: subject_embedding(models, data, rules) for name, data in originals.items()}

    def between(first: str, second: str, a: Embedding | None, b: Embedding | None) -> Pair:
        return Pair(first, second, None if a is None or b is None else distance(a, b))

    genuine: list[Pair] = []
    for name, image in identities().items():
        for variant, make in VARIANTS.items():
            other = subject_embedding(models, make(image), rules)
            genuine.append(between(name, f"{name}/{variant}", embeddings[name], other))
    impostor = [
        between(a, b, embeddings[a], embeddings[b])
        for a, b in itertools.combinations(sorted(embeddings), 2)
    ]
    return SetErrors(threshold=rules.threshold, genuine=genuine, impostor=impostor)


async def record_loop_gaps(gaps: list[float]) -> None:
    """Until cancelled, append to `gaps` each time between the event loop's wake-ups on a 2 ms
    timer: a long one means something held the loop (face work must never)."""
    last = time.perf_counter()
    while True:
        await asyncio.sleep(0.002)
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
