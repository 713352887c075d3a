"""Holds jobs in our own queue so that the provider never sees more than it accepts at once, and
hands the free slots out fairly.

ModelsLab caps the requests an account may have queued (5, 10 or 15). A job takes a slot when it
is submitted and gives it back when the provider has finished it; jobs beyond the cap wait here
instead of being refused by the provider.

They do not wait in arrival order: one user who submits ten jobs would then hold up everyone who
comes after them. The waiting line is a `FairQueue` (see `bot.jobs.fair_queue`): round-robin across
users, then across communities, first-come-first-served only within one user's own jobs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable

from bot.jobs.fair_queue import FairQueue


class Dispatcher:
    def __init__(self, capacity: int, on_change: Callable[[], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.capacity = capacity
        self._in_flight: set[str] = set()
        self._queue = FairQueue()
        self._waiters: dict[str, asyncio.Future[None]] = {}
        self._on_change = on_change or (lambda: None)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def waiting(self) -> list[str]:
        """Waiting job ids, in the order they will be dispatched (if nothing else arrives)."""
        return list(self._queue)

    @property
    def waiting_count(self) -> int:
        return len(self._queue)

    def position(self, job_id: str) -> int | None:
        """1-based place in `waiting`, or None if the job is not waiting."""
        return self._queue.position(job_id)

    async def acquire(self, job_id: str, *, user: Hashable, community: Hashable = None) -> None:
        """Wait for a provider slot for this job.

        `user` and `community` are the keys that fairness goes by; community None means direct
        messages, which take turns as one community of their own.
        """
        if job_id in self._in_flight:
            return
        if job_id in self._waiters:
            raise ValueError(f"job {job_id!r} is already waiting")
        if not self._queue and len(self._in_flight) < self.capacity:
            # Straight through, but it still takes its turn, so the user's next job waits a round.
            self._queue.push(job_id, user, community)
            self._queue.pop()
            self._in_flight.add(job_id)
            return
        future = asyncio.get_running_loop().create_future()
        self._queue.push(job_id, user, community)
        self._waiters[job_id] = future
        self._on_change()
        try:
            await future
        except asyncio.CancelledError:
            if self._waiters.get(job_id) is future:
                del self._waiters[job_id]
                self._queue.remove(job_id)
                self._on_change()
            else:
                self.release(job_id)  # the slot was handed over as we were cancelled
            raise

    def claim(self, job_id: str) -> None:
        """Count a job already in the provider's queue (one resumed after a restart)."""
        self._in_flight.add(job_id)

    def release(self, job_id: str) -> None:
        """Give a job's slot back and hand the free slots to the next waiting jobs."""
        if job_id not in self._in_flight:
            return
        self._in_flight.discard(job_id)
        changed = False
        while self._queue and len(self._in_flight) < self.capacity:
            next_id = self._queue.first()
            future = self._waiters.pop(next_id)
            changed = True
            if future.done():  # cancelled, and its task has not yet run to take itself out
                self._queue.remove(next_id)
                continue
            self._queue.pop()
            self._in_flight.add(next_id)
            future.set_result(None)
        if changed:
            self._on_change()
