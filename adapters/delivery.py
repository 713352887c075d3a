"""What every platform's delivery of a job does alike: coalesce progress edits, and retry the
result until it is shown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from bot.commands import CommandLayer
from bot.i18n import speaking
from bot.jobs.events import JobEvent

log = logging.getLogger(__name__)

_Target = TypeVar("_Target")

RETRY_FIRST_SECONDS = 5.0
RETRY_MAX_SECONDS = 300.0


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


async def show_until_done(
    layer: CommandLayer,
    job_id: str,
    final: JobEvent | None,
    show: Callable[[JobEvent], Awaitable[bool]],
    tidy: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Show a job's final event, retrying with a growing delay while `show` says a failure may
    pass (False); then the result is no longer owed, and `tidy` clears up after it (a status
    message). Recording it comes first: the time between the platform taking the result and
    the database knowing is the window in which a crash shows it twice."""
    delay = RETRY_FIRST_SECONDS
    if final is not None and not await layer.may_show(job_id):
        log.info("job %s: its result is shown by another process", job_id)
        return
    while final is not None and not await show(final):
        log.warning("job %s: result not shown yet; trying again in %.0f s", job_id, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_SECONDS)
    await layer.delivered(job_id)
    if final is not None and tidy is not None:
        await tidy()


async def take_over_deliveries(
    layer: CommandLayer,
    platform: str,
    read_target: Callable[[dict[str, Any]], _Target],
    follow: Callable[[str, _Target], None],
) -> None:
    """Show the results this platform owes that no process is showing (at start: the last
    run's; later: a replica's that died): each is claimed for this process, then followed in
    the language its asker was answered in."""
    for pending in await layer.undelivered(platform):
        try:
            target = read_target(pending.target)
        except ValueError:
            log.exception("job %s: unreadable delivery target; dropped", pending.job_id)
            await layer.delivered(pending.job_id)
            continue
        with speaking(layer.noted_language(pending.language)):
            follow(pending.job_id, target)


async def keep_taking_over_deliveries(
    layer: CommandLayer,
    platform: str,
    read_target: Callable[[dict[str, Any]], _Target],
    follow: Callable[[str, _Target], None],
) -> None:
    """`take_over_deliveries` now and then, for as long as the adapter runs."""
    while True:
        await asyncio.sleep(layer.claim_interval)
        try:
            await take_over_deliveries(layer, platform, read_target, follow)
        except Exception:
            log.exception("taking over results still owed failed; trying again later")
