"""The one thread charts are drawn in. Drawing is CPU work that would stall the event loop; it
gets a thread of its own rather than asyncio's default pool, which serves the image store, and
only one, so that charts asked for at once wait their turn instead of taking every core. (A
chart is drawn from our own figures, not from a hostile file: it needs no decode worker.)"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_executor: ThreadPoolExecutor | None = None
_lock = threading.Lock()


async def in_chart_thread(fn: Callable[..., T], /, *args: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_chart_thread(), functools.partial(fn, *args))


def _chart_thread() -> ThreadPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="charts")
        return _executor
