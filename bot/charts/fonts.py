"""The fonts chart texts are drawn in.

Chart labels are to be translated (Spanish, Portuguese, German, French, Russian, Japanese), so
the first choice draws Latin, Cyrillic and CJK alike: Noto Sans CJK, from the
`manimgx-fonts-cjk` package (a dependency; SIL Open Font License 1.1). After it come Debian's
copies of Noto Sans CJK and DejaVu Sans (Latin and Cyrillic), then Pillow's own font (Latin).

Each text is drawn in the first font of that chain with a glyph for every one of its
characters, so a font missing some never turns them into boxes while another has them. When
none has them all, the one missing fewest is used and the log names the text.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path

from PIL import ImageFont

log = logging.getLogger(__name__)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
REGULAR_WEIGHT = 400
BOLD_WEIGHT = 700
# A code point no font maps: it draws the font's "missing glyph" box, which is compared to.
_UNMAPPED = "\U0010fffd"
_DEBIAN_FONTS = Path("/usr/share/fonts")


@dataclass(frozen=True)
class FontFile:
    """A font in one file, or a face of a collection (`index`). A variable font is set to each
    weight; a static family names its bold file."""

    path: Path
    index: int = 0
    bold_path: Path | None = None


@cache
def font_chain() -> tuple[FontFile, ...]:
    """The fonts to try, best first: those installed here."""
    candidates = [
        *_packaged_noto_cjk(),
        _static_family(
            "opentype/noto/NotoSansCJK-Regular.ttc", "opentype/noto/NotoSansCJK-Bold.ttc"
        ),
        _static_family("truetype/dejavu/DejaVuSans.ttf", "truetype/dejavu/DejaVuSans-Bold.ttf"),
    ]
    return tuple(font for font in candidates if font.path.is_file())


def _static_family(regular: str, bold: str) -> FontFile:
    bold_path = _DEBIAN_FONTS / bold
    return FontFile(_DEBIAN_FONTS / regular, bold_path=bold_path if bold_path.is_file() else None)


def _packaged_noto_cjk() -> list[FontFile]:
    try:
        import manimgx_fonts_cjk
    except ImportError:
        return []
    # Face 0 of the collection is Noto Sans CJK JP: Japanese glyph forms, as the labels need.
    return [FontFile(Path(manimgx_fonts_cjk.__file__).parent / "NotoSansCJK-VF.otf.ttc")]


def font_for(text: str, size: int, *, bold: bool = False) -> Font:
    """The first font of the chain that draws every character of `text`, at `size` pixels."""
    best: Font | None = None
    fewest_missing = len(text) + 1
    for font in _fonts(size, bold):
        missing = sum(not has_glyph(font, char) for char in set(text))
        if not missing:
            return font
        if missing < fewest_missing:
            best, fewest_missing = font, missing
    assert best is not None
    log.warning("no font here draws every character of the chart text %r", text)
    return best


def _fonts(size: int, bold: bool) -> Iterator[Font]:
    for file in font_chain():
        yield _load(file, size, bold)
    yield _pillows_own(size)


@lru_cache(maxsize=64)
def _load(file: FontFile, size: int, bold: bool) -> ImageFont.FreeTypeFont:
    path = file.bold_path if bold and file.bold_path is not None else file.path
    font = ImageFont.truetype(str(path), size, index=file.index)
    try:
        axes = font.get_variation_axes()
    except OSError:  # a static font: its weight is its file's
        return font
    weight = BOLD_WEIGHT if bold else REGULAR_WEIGHT
    # A variable font starts at its default instance (Noto Sans CJK's is Thin).
    font.set_variation_by_axes(
        [weight if axis["name"] == b"Weight" else axis["default"] for axis in axes]
    )
    return font


@lru_cache(maxsize=16)
def _pillows_own(size: int) -> Font:
    return ImageFont.load_default(size)


@lru_cache(maxsize=8192)
def has_glyph(font: Font, char: str) -> bool:
    """Whether `font` draws `char` as itself rather than as its missing-glyph box."""
    if char.isspace():
        return True
    return _drawn(font, char) != _drawn(font, _UNMAPPED)


def _drawn(font: Font, char: str) -> tuple[tuple[int, int], bytes]:
    mask = font.getmask(char, mode="L")
    return mask.size, bytes(mask)
