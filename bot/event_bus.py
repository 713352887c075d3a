"""In-process delivery of job events to whoever is watching a job (a CLI, an adapter)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import AsyncIterator

from bot.events import FINAL_EVENTS, JobEvent


class EventBus:
    def __init__(self) -> None:
        self._watchers: dict[str, list[asyncio.Queue[JobEvent]]] = defaultdict(list)

    def watching(self, job_id: str) -> bool:
        return bool(self._watchers.get(job_id))

    def publish(self, event: JobEvent) -> None:
        for queue in self._watchers.get(event.job_id, ()):
            queue.put_nowait(event)

    def watch(self, job_id: str) -> AsyncIterator[JobEvent]:
        """Events of one job from now on, ending after its final one (Completed or Failed).

        The watcher is registered before this returns, so no event published after the call
        is missed, even if iteration starts later.
        """
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        self._watchers[job_id].append(queue)
        return self._drain(job_id, queue)

    async def _drain(self, job_id: str, queue: asyncio.Queue[JobEvent]) -> AsyncIterator[JobEvent]:
        try:
            while True:
                event = await queue.get()
                yield event
                if isinstance(event, FINAL_EVENTS):
                    return
        finally:
            self._watchers[job_id].remove(queue)
            if not self._watchers[job_id]:
                del self._watchers[job_id]
