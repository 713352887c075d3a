"""The event loop a command runs on: asyncio's own, or uvloop's (EVENT_LOOP=uvloop)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from bot.config import ConfigError

T = TypeVar("T")


def loop_runner(choice: str) -> Callable[[Coroutine[Any, Any, T]], T]:
    """Runs a coroutine to its end on a new loop of the chosen kind."""
    if choice == "asyncio":
        return asyncio.run
    if choice != "uvloop":
        raise ConfigError(f"invalid setting EVENT_LOOP: {choice!r} is not asyncio or uvloop")
    try:
        import uvloop
    except ImportError:
        install = "pip install 'headshot-bot[uvloop]'"
        raise ConfigError(
            f"invalid setting EVENT_LOOP: uvloop is not installed: {install}"
        ) from None
    return uvloop.run


def loop_name() -> str:
    """The running loop's kind, as EVENT_LOOP names it."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
