"""Holds jobs in our own queue so that the provider never sees more than it accepts at once.

ModelsLab caps the requests an account may have queued (5, 10 or 15). A job takes a slot when it
is submitted and gives it back when the provider has finished it; jobs beyond the cap wait here,
in arrival order, instead of being refused by the provider.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable


class Dispatcher:
    def __init__(self, capacity: int, on_change: Callable[[], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._in_flight: set[str] = set()
        self._waiting: OrderedDict[str, asyncio.Future[None]] = OrderedDict()
        self._on_change = on_change or (lambda: None)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def waiting(self) -> list[str]:
        return list(self._waiting)

    def position(self, job_id: str) -> int | None:
        """1-based place in the waiting line, or None if the job is not waiting."""
        for index, waiting_id in enumerate(self._waiting, start=1):
            if waiting_id == job_id:
                return index
        return None

    async def acquire(self, job_id: str) -> None:
        """Wait for a provider slot for this job."""
        if job_id in self._in_flight:
            return
        if not self._waiting and len(self._in_flight) < self.capacity:
            self._in_flight.add(job_id)
            return
        future = asyncio.get_running_loop().create_future()
        self._waiting[job_id] = future
        self._on_change()
        try:
            await future
        except asyncio.CancelledError:
            if self._waiting.pop(job_id, None) is None:
                self.release(job_id)  # the slot was handed over as we were cancelled
            raise

    def claim(self, job_id: str) -> None:
        """Count a job already in the provider's queue (one resumed after a restart)."""
        self._in_flight.add(job_id)

    def release(self, job_id: str) -> None:
        if job_id not in self._in_flight:
            return
        self._in_flight.discard(job_id)
        handed = False
        while self._waiting and len(self._in_flight) < self.capacity:
            next_id, future = self._waiting.popitem(last=False)
            if future.done():
                continue
            self._in_flight.add(next_id)
            future.set_result(None)
            handed = True
        if handed:
            self._on_change()
