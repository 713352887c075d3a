"""Work that must be spaced out in time across every process on one database: a chat
platform's session starts (Discord takes one IDENTIFY per bucket every 5 seconds, whichever
replica sends it).

A turn is the coordination's lock named after the work, kept for a while after it is taken
and then let go by a task of its own, so the work itself need not wait. The coordination's
locks belong to a process (asking again while holding one is True, and on SQLite every lock is
the only service's): a lock per name in this process keeps its own takers in line too.
"""

from __future__ import annotations

import asyncio
import logging

from storage.coordination import TURN_POLL_SECONDS, Coordination

log = logging.getLogger(__name__)


class SpacedTurns:
    def __init__(self, coordination: Coordination) -> None:
        self._coordination = coordination
        self._here: dict[str, asyncio.Lock] = {}
        self._keeping: set[asyncio.Task[None]] = set()

    async def take(self, name: str, *, keep_for: float) -> None:
        """Until it is this process's turn at `name`. The turn is kept `keep_for` seconds from
        now: no other turn at `name` starts sooner, in this process or any other."""
        here = self._here.setdefault(name, asyncio.Lock())
        await here.acquire()
        try:
            # The holder may be another process: nothing here could be awaited for its release.
            while not await self._coordination.try_lock(name):  # noqa: ASYNC110
                await asyncio.sleep(TURN_POLL_SECONDS)
        except BaseException:
            here.release()
            raise
        keeper = asyncio.create_task(self._keep(name, here, keep_for), name=f"turn-{name}")
        self._keeping.add(keeper)
        keeper.add_done_callback(self._keeping.discard)

    async def _keep(self, name: str, here: asyncio.Lock, seconds: float) -> None:
        try:
            await asyncio.sleep(seconds)
        finally:
            try:
                await self._coordination.unlock(name)
            except Exception:  # the lost connection took the lock with it
                log.warning("letting go of the turn at %s failed", name, exc_info=True)
            finally:
                here.release()

    async def aclose(self) -> None:
        """Let every turn still kept go now (the process is stopping)."""
        keepers = list(self._keeping)
        for keeper in keepers:
            keeper.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
