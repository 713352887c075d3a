"""In-process delivery of job events to whoever is watching a job (a CLI, an adapter)."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque

from bot.jobs.events import FINAL_EVENTS, JobEvent


class Subscription:
    """The events of one job from the moment of subscribing, ending after its final one.

    Iterate it (`async for event in subscription`), or `close()` it to stop early; an
    iteration that ends or is abandoned through `close()` unregisters it.
    """

    # Thousands wait at once behind a long queue: a deque and one future made only while
    # someone is waiting cost a fraction of an asyncio.Queue each.
    __slots__ = ("_bus", "_closed", "_pending", "_waiter", "job_id")

    def __init__(self, bus: EventBus, job_id: str) -> None:
        self._bus = bus
        self.job_id = job_id
        self._pending: deque[JobEvent] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def put(self, event: JobEvent) -> None:
        self._pending.append(event)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> JobEvent:
        if self._closed:
            raise StopAsyncIteration
        try:
            while not self._pending:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
        except BaseException:
            self.close()
            raise
        event = self._pending.popleft()
        if isinstance(event, FINAL_EVENTS):
            self.close()
        return event

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bus._unsubscribe(self)


class EventBus:
    def __init__(self) -> None:
        self._watchers: dict[str, list[Subscription]] = defaultdict(list)

    @property
    def watched_jobs(self) -> list[str]:
        return list(self._watchers)

    def watching(self, job_id: str) -> bool:
        return job_id in self._watchers

    def publish(self, event: JobEvent) -> None:
        for subscription in self._watchers.get(event.job_id, ()):
            subscription.put(event)

    def watch(self, job_id: str) -> Subscription:
        """Events of one job from now on, ending after its final one (Completed or Failed).

        The watcher is registered before this returns, so no event published after the call
        is missed, even if iteration starts later.
        """
        subscription = Subscription(self, job_id)
        self._watchers[job_id].append(subscription)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        watchers = self._watchers.get(subscription.job_id)
        if watchers and subscription in watchers:
            watchers.remove(subscription)
            if not watchers:
                del self._watchers[subscription.job_id]
