"""Lines typed on stdin, as an async iterator, so that a job's progress prints while the
operator types.

A daemon thread does the blocking reads: asyncio's pipe reader would switch a terminal's stdin
to non-blocking mode (shared with the shell) and cannot read a redirected file, and a thread of
the default executor would keep the process waiting for one more line at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import AsyncIterator
from typing import TextIO


async def stdin_lines(stream: TextIO | None = None) -> AsyncIterator[str]:
    """Each line read (without its line break), until end of input."""
    source = stream if stream is not None else sys.stdin
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def hand_over(line: str | None) -> None:
        # Once the loop has closed nobody is reading any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, line)

    def read() -> None:
        try:
            for line in source:
                hand_over(line.rstrip("\r\n"))
        except (OSError, ValueError):  # stdin closed under us: the same as its end
            pass
        hand_over(None)

    threading.Thread(target=read, name="stdin-reader", daemon=True).start()
    while (line := await queue.get()) is not None:
        yield line
