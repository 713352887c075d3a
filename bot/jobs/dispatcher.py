"""Holds jobs until the provider has room for them, counting its slots across every process.

ModelsLab caps the requests an account may have queued (5, 10 or 15). Jobs beyond the cap wait
instead of being refused by the provider, and they wait in a fair line rather than in arrival
order. Both the count and the line live in the database (`storage.dispatch`), so the cap holds
for all the replicas of a cluster together and a user's place is the same whichever replica
they ask.

A *dispatch pass* places new jobs in the line and gives the free slots to the first jobs in it,
whichever process drives them. Each process runs passes while it has jobs waiting: when one of
its jobs starts waiting, when any process says the line changed (a slot freed, a job placed or
given a slot: a message over the coordination's channel, LISTEN/NOTIFY on PostgreSQL), and every
`check_seconds` in case such a message was lost.

The slots are a fixed number (ModelsLab's cap), or read at each pass from a *capacity source*:
the pools of the GPU workers alive now, per operation (`bot.fleet.pools`). A worker that comes
up is given jobs by the next pass, `check_seconds` later at most.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable

from bot.log_context import outside_job
from storage.coordination import Coordination
from storage.dispatch import DispatchQueue, Pool

log = logging.getLogger(__name__)

DISPATCH = "job_dispatch"
RETRY_SECONDS = 1.0
# A NOTIFY payload holds under 8000 bytes: jobs granted beyond these are found by a pass or check.
MAX_NOTED = 100

# The generator's slots as they are now (the GPU workers alive, each serving some operations).
CapacitySource = Callable[[], Awaitable[list[Pool]]]


class Dispatcher:
    def __init__(
        self,
        *,
        queue: DispatchQueue,
        coordination: Coordination,
        capacity: int | CapacitySource,
        origin: str,
        check_seconds: float,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        if isinstance(capacity, int):
            if capacity < 1:
                raise ValueError("capacity must be at least 1")
            self._source: CapacitySource = _constant(capacity)
            # Every slot the generator has, at the last pass (an int: always these).
            self.capacity = capacity
        else:
            self._source = capacity
            self.capacity = 0
        self._queue = queue
        self._coordination = coordination
        self._origin = origin
        self._check_seconds = check_seconds
        self._on_change = on_change or (lambda: None)
        self._waiters: dict[str, asyncio.Future[None]] = {}
        # Jobs of this process the generator has answered while the database still counts
        # them in flight (their answer is written with their end): their slots are free.
        self._answered: set[str] = set()
        self._pass_turn = asyncio.Lock()
        self._pass_wanted = False
        self._pump: asyncio.Task[None] | None = None
        self._checker: asyncio.Task[None] | None = None
        self._notes: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._coordination.listen(DISPATCH, self._heard)
        self._checker = asyncio.create_task(self._check_periodically(), name="dispatch-check")

    async def stop(self) -> None:
        tasks = [t for t in (self._pump, self._checker, *self._notes) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._pump = self._checker = None

    @property
    def waiting_here(self) -> int:
        """Jobs of this process waiting for a slot."""
        return len(self._waiters)

    async def acquire(self, job_id: str) -> None:
        """Wait until the job has been given a provider slot (it is `submitted` now) or no
        longer waits at all (then the caller's guarded transition finds that out)."""
        if job_id in self._waiters:
            raise ValueError(f"job {job_id!r} is already waiting")
        future = asyncio.get_running_loop().create_future()
        self._waiters[job_id] = future
        self._want_pass()
        try:
            await future
        finally:
            if self._waiters.get(job_id) is future:
                del self._waiters[job_id]

    def answered(self, job_id: str) -> None:
        """The generator has answered this job of this process, whose row still says it is in
        flight until its end is written: its slot is free now, for this process's passes."""
        self._answered.add(job_id)
        self.changed()

    def forget(self, job_id: str) -> None:
        """The job is no longer driven here (ended, or left to another process)."""
        self._answered.discard(job_id)

    def changed(self) -> None:
        """The line changed here (a slot freed, a job ended): pass it on, to every process."""
        self._want_pass()
        self._on_change()
        self._note([])

    async def position(self, job_id: str) -> int | None:
        """1-based place in the line; None if the job does not wait. A job that waits here but
        has no place yet is placed first."""
        position = await self._queue.position(job_id)
        if position is None and job_id in self._waiters:
            # A pass of its own. Waiting for the pump's next pass instead (one pass for a burst's
            # newcomers) cost less CPU, but Discord's final messages then came about 100 ms
            # later at p99 in bench/discord_ack.py, for a reason not found yet.
            await self._dispatch()
            position = await self._queue.position(job_id)
        return position

    async def positions(self, job_ids: Iterable[str]) -> dict[str, int]:
        return await self._queue.positions(job_ids)

    async def waiting_count(self) -> int:
        """Jobs waiting in the line, every process's."""
        return await self._queue.waiting_count()

    async def in_flight(self) -> int:
        """Jobs holding a provider slot, every process's."""
        return await self._queue.in_flight()

    async def current_capacity(self) -> int:
        """Every slot the generator has now (also kept as `capacity`), those of a pool whose
        jobs go through only to be refused aside."""
        return _total(await self._read_pools())

    async def _read_pools(self) -> list[Pool]:
        pools = await self._source()
        self.capacity = _total(pools)
        return pools

    # ---- passes ---------------------------------------------------------------------------

    def _want_pass(self) -> None:
        self._pass_wanted = True
        if self._pump is None or self._pump.done():
            # A pass serves every job, though the first to wait may start it from its task.
            self._pump = asyncio.create_task(
                self._pump_passes(), name="dispatch-pass", context=outside_job()
            )

    async def _pump_passes(self) -> None:
        # Requests that come in during a pass are served by one more pass, not one each.
        while self._pass_wanted and self._waiters:
            self._pass_wanted = False
            try:
                await self._dispatch()
            except Exception:
                log.exception("a dispatch pass failed; trying again shortly")
                self._pass_wanted = True
                await asyncio.sleep(RETRY_SECONDS)

    async def _dispatch(self) -> None:
        async with self._pass_turn:
            pools = await self._read_pools()
            result = await self._queue.dispatch(pools, answered=frozenset(self._answered))
        self._granted(result.granted)
        if result.changed:
            self._on_change()
            self._note(result.granted)

    def _granted(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            future = self._waiters.pop(job_id, None)
            if future is not None and not future.done():
                future.set_result(None)

    async def _check_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._check_seconds)
            try:
                if self._waiters:
                    self._granted(await self._queue.granted_among(list(self._waiters)))
                    self._want_pass()
                self._on_change()
            except Exception:
                log.exception("checking on waiting jobs failed; trying again later")

    # ---- the channel ----------------------------------------------------------------------

    def _note(self, granted: list[str]) -> None:
        if not self._coordination.reaches_others:
            return
        message = json.dumps({"o": self._origin, "g": granted[:MAX_NOTED]}, separators=(",", ":"))
        task = asyncio.create_task(self._publish(message), context=outside_job())
        self._notes.add(task)
        task.add_done_callback(self._notes.discard)

    async def _publish(self, message: str) -> None:
        try:
            await self._coordination.publish(DISPATCH, message)
        except Exception as exc:
            log.warning("telling other processes the line changed failed: %s", exc)

    def _heard(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            if message.get("o") == self._origin:
                return
            granted = [str(job_id) for job_id in message.get("g", [])]
        except (ValueError, TypeError, AttributeError):
            log.warning("an unreadable dispatch message came over the channel; ignored")
            return
        with contextlib.suppress(RuntimeError):  # heard while the loop shuts down
            self._granted(granted)
            if self._waiters:
                self._want_pass()
            self._on_change()


def _constant(slots: int) -> CapacitySource:
    pools = [Pool(None, slots)]

    async def source() -> list[Pool]:
        return pools

    return source


def _total(pools: list[Pool]) -> int:
    return sum(pool.slots for pool in pools if not pool.to_refuse)
