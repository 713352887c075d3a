"""A Pillow drawing surface in chart coordinates. Everything is drawn at `SUPERSAMPLE` times the
size and shrunk at the end: Pillow draws lines and shapes without anti-aliasing, and the
shrinking smooths them. Text goes through `fonts.font_for`, so each label gets a font that
draws it."""

from __future__ import annotations

import io
from collections.abc import Sequence

from PIL import Image, ImageDraw

from bot.charts.fonts import font_for

SUPERSAMPLE = 2
Point = tuple[float, float]


class Canvas:
    def __init__(self, width: int, height: int, background: str) -> None:
        self.width, self.height = width, height
        self._image = Image.new("RGB", (width * SUPERSAMPLE, height * SUPERSAMPLE), background)
        self._draw = ImageDraw.Draw(self._image)

    def rectangle(self, left: float, top: float, right: float, bottom: float, fill: str) -> None:
        box = [_px(left), _px(top), max(_px(left), _px(right) - 1), max(_px(top), _px(bottom) - 1)]
        self._draw.rectangle(box, fill=fill)

    def rounded(
        self, left: float, top: float, right: float, bottom: float, radius: float, fill: str
    ) -> None:
        box = [_px(left), _px(top), _px(right) - 1, _px(bottom) - 1]
        self._draw.rounded_rectangle(box, radius=_px(radius), fill=fill)

    def line(self, points: Sequence[Point], fill: str, width: float) -> None:
        scaled = [(_px(x), _px(y)) for x, y in points]
        self._draw.line(scaled, fill=fill, width=max(1, _px(width)), joint="curve")

    def polygon(self, points: Sequence[Point], fill: str) -> None:
        self._draw.polygon([(_px(x), _px(y)) for x, y in points], fill=fill)

    def dot(self, centre: Point, radius: float, fill: str, ring: str | None = None) -> None:
        x, y = _px(centre[0]), _px(centre[1])
        r = _px(radius)
        outline = _px(radius / 2.5) if ring is not None else 0
        self._draw.ellipse([x - r, y - r, x + r, y + r], fill=fill, outline=ring, width=outline)

    def text(
        self,
        at: Point,
        text: str,
        *,
        size: int,
        fill: str,
        bold: bool = False,
        anchor: str = "la",
    ) -> None:
        """`anchor` is Pillow's: "la" left and ascender, "rm" right and middle, "mt"…"""
        font = font_for(text, size * SUPERSAMPLE, bold=bold)
        self._draw.text((_px(at[0]), _px(at[1])), text, font=font, fill=fill, anchor=anchor)

    def text_width(self, text: str, *, size: int, bold: bool = False) -> float:
        font = font_for(text, size * SUPERSAMPLE, bold=bold)
        return font.getlength(text) / SUPERSAMPLE

    def png(self) -> bytes:
        final = self._image.resize((self.width, self.height), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        final.save(out, format="PNG", optimize=True)
        return out.getvalue()


def _px(value: float) -> int:
    return round(value * SUPERSAMPLE)
