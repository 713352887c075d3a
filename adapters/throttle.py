"""Coalescing progress updates, for any platform that edits a message to show a job's progress."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from bot.events import JobEvent


class Throttle:
    """Shows the latest of a stream of items, at most one every `interval` seconds (the first
    too: the message already says something)."""

    def __init__(self, show: Callable[[JobEvent], Awaitable[None]], interval: float) -> None:
        self._show = show
        self._interval = interval
        self._latest: JobEvent | None = None
        self._shown_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def offer(self, item: JobEvent) -> None:
        self._latest = item
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while self._latest is not None:
            wait = self._shown_at + self._interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            item, self._latest = self._latest, None
            if item is None:
                return
            self._shown_at = time.monotonic()
            await self._show(item)

    async def close(self) -> None:
        """Drop what is not shown yet and stop (an edit in flight is abandoned)."""
        self._latest = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
