"""Where the terminal puts the images it shows: one file per stored image, named by its
content, so showing the same image again (a history page) writes no second copy."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

from bot.ui import Chart, ImageRef

NAME_CHARS = 16


class ImageFolder:
    def __init__(self, path: Path) -> None:
        self.path = path.resolve()

    async def save(self, image: ImageRef, data: bytes) -> Path:
        """Write `data` (the bytes of `image`) and return its path. Raises OSError."""
        name = Path(image.content_key).name
        target = self.path / f"{Path(name).stem[:NAME_CHARS]}.{image.extension}"
        await asyncio.to_thread(_write_once, target, data)
        return target

    async def save_chart(self, chart: Chart) -> Path:
        """Write a chart, named by its content too ("stats-…png"), and return its path."""
        name = Path(chart.filename)
        digest = hashlib.sha256(chart.png).hexdigest()[:NAME_CHARS]
        target = self.path / f"{name.stem}-{digest}{name.suffix}"
        await asyncio.to_thread(_write_once, target, chart.png)
        return target


def _write_once(target: Path, data: bytes) -> None:
    if target.exists():
        return
    partial = target.with_name(f".{target.name}.part")
    partial.write_bytes(data)
    partial.replace(target)
