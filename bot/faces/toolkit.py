"""The face toolkit the bot uses: the intake check and the identity gate, off the event loop.

Why processes, not threads: dlib releases the GIL while it detects, but not while its ResNet
embeds a face (about 160 ms on one core here), so a thread doing it would stall the event
loop for that long. Each worker is a spawned interpreter (never forked from this threaded
asyncio process) that loads its own models once, runs below the service in CPU priority, and
answers one call at a time. A compare() call runs in one worker from start to end, so the
embeddings never leave it: only verdicts, distances and times come back.

Bounded: a call is handed to a worker only when one is free, so its time limit measures its
own work; one that runs past it (a worker stuck in native code) has every worker killed and
replaced. A free worker goes to the gate's checks of paid jobs first, then to intake checks,
each in arrival order, so a flood of selfies cannot hold back deliveries. An intake check is
refused (`FacesBusy`) when those already waiting would take `max_wait` seconds (30) or more,
by the running average of a check's time; the gate's checks always wait their turn.

numpy and dlib are imported in the workers only, never in the service: importing numpy alone
in the service took `bench/discord_ack.py`'s acknowledgement p99 from 0.32 s to 1.1 s (faces
off, 500 at once; the cause inside numpy's import is not isolated). `test_local_backend`
checks that the service imports without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from typing import Any, TypeVar

from bot.faces.models import FaceModels, FaceModelsMissing, load_models
from bot.faces.rules import FaceRules
from bot.faces.score import IdentityScore
from bot.faces.verdict import SelfieCheck

__all__ = ["FaceCheckFailed", "FaceToolkit", "FacesBusy"]

log = logging.getLogger(__name__)

T = TypeVar("T")
# How long aclose() waits for the workers to finish their calls before it kills them.
_STOP_SECONDS = 10.0
# An intake check's time before any was measured (a phone photo's, with one confirmation),
# and the weight of each new one in the running average.
_FIRST_CHECK_SECONDS = 0.2
_AVERAGE_WEIGHT = 0.1


class FaceCheckFailed(Exception):
    """The face workers could not answer: one died, or ran past its time limit."""


class FacesBusy(Exception):
    """Too many intake checks are waiting: this one is refused rather than queued."""


class FaceToolkit:
    """Faces on the CPU with dlib, in `workers` worker processes (one call at a time each)."""

    def __init__(
        self,
        rules: FaceRules,
        *,
        workers: int = 1,
        time_limit: float = 30.0,
        max_wait: float = 30.0,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.rules = rules
        self.time_limit = time_limit
        self._workers = workers
        self.max_wait = max_wait
        self._intake_checks = 0
        self._check_seconds = _FIRST_CHECK_SECONDS
        self._turns = _Turns(workers)
        self._pool = self._new_pool()

    async def start(self) -> None:
        """Start the workers and load their models; raise FaceModelsMissing if they cannot."""
        await asyncio.gather(*(self._run(_ready, first=True) for _ in range(self._workers)))

    async def check_selfie(self, image: bytes) -> SelfieCheck:
        """The intake verdict on a sanitised selfie; FacesBusy when too much is waiting."""
        waiting = self._intake_checks * self._check_seconds / self._workers
        if waiting >= self.max_wait:
            raise FacesBusy(f"{self._intake_checks} face checks waiting, about {waiting:.0f} s")
        self._intake_checks += 1
        try:
            check = await self._run(_check_selfie, image, self.rules, first=False)
        finally:
            self._intake_checks -= 1
        self._check_seconds += _AVERAGE_WEIGHT * (check.seconds - self._check_seconds)
        log.debug("face check: %s in %.0f ms", check.verdict, check.seconds * 1000)
        return check

    async def compare(self, selfie: bytes, outputs: Sequence[bytes]) -> list[IdentityScore]:
        """Each output's face compared with the selfie's, in the outputs' order."""
        scores = await self._run(_compare, selfie, list(outputs), self.rules, first=True)
        for score in scores:
            log.debug("identity check: passed=%s in %.0f ms", score.passed, score.seconds * 1000)
        return scores

    async def aclose(self) -> None:
        pool = self._pool
        shutdown = asyncio.get_running_loop().run_in_executor(
            None, functools.partial(pool.shutdown, wait=True, cancel_futures=True)
        )
        try:
            await asyncio.wait_for(shutdown, _STOP_SECONDS)
        except TimeoutError:
            log.error("the face workers did not stop within %.0f s; killing them", _STOP_SECONDS)
            _kill(pool)

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
        )

    async def _run(self, fn: Callable[..., T], *args: object, first: bool) -> T:
        """Run `fn(*args)` in a worker when one is free (`first`: ahead of intake checks)."""
        loop = asyncio.get_running_loop()
        async with self._turns.turn(first=first):
            pool = self._pool
            try:
                # A pool that has seen its worker die already refuses the call itself.
                work = loop.run_in_executor(pool, functools.partial(fn, *args))
                return await asyncio.wait_for(work, self.time_limit)
            except TimeoutError:
                log.error(
                    "a face check ran past %.0f s; the face workers are replaced", self.time_limit
                )
                self._replace(pool)
                raise FaceCheckFailed(f"ran past {self.time_limit:.0f} s") from None
            except BrokenExecutor:
                # A worker died (killed, or crashed in native code): later calls get fresh ones.
                log.error("a face worker died; starting new ones")
                self._replace(pool)
                raise FaceCheckFailed("a face worker died") from None

    def _replace(self, pool: ProcessPoolExecutor) -> None:
        if self._pool is pool:
            self._pool = self._new_pool()
            _kill(pool)


class _Turns:
    """Who gets the next free worker: callers with `first` before the others, each group in
    arrival order."""

    def __init__(self, workers: int) -> None:
        self._free = workers
        self._waiting: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque())

    @contextlib.asynccontextmanager
    async def turn(self, *, first: bool) -> AsyncIterator[None]:
        if self._free > 0:
            self._free -= 1
        else:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting[0 if first else 1].append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._hand_on()  # given a worker just as it was cancelled: pass it on
                raise
        try:
            yield
        finally:
            self._hand_on()

    def _hand_on(self) -> None:
        for queue in self._waiting:
            while queue:
                waiter = queue.popleft()
                if not waiter.done():  # a cancelled waiter is skipped
                    waiter.set_result(None)
                    return
        self._free += 1


def _kill(pool: ProcessPoolExecutor) -> None:
    """Stop a pool now, its running calls included: shutdown() alone waits for them."""
    # The executor keeps its processes in a private mapping; nothing public can end a call
    # stuck in native code.
    processes: dict[int, Any] = getattr(pool, "_processes", None) or {}
    for process in list(processes.values()):
        with contextlib.suppress(Exception):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


# What runs in the worker processes.

_models: FaceModels | None = None
_missing: FaceModelsMissing | None = None


def _start_worker() -> None:
    global _models, _missing
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)  # the service's event loop comes first on a small host
    try:
        _models = load_models()
    except FaceModelsMissing as exc:
        _missing = exc


def _worker_models() -> FaceModels:
    if _models is None:
        raise _missing or FaceModelsMissing("face models not loaded")
    return _models


def _ready() -> None:
    _worker_models()


def _check_selfie(image: bytes, rules: FaceRules) -> SelfieCheck:
    from bot.faces import checks  # numpy: in the workers only (see the module's doc)

    return checks.check_selfie(_worker_models(), image, rules)


def _compare(selfie: bytes, outputs: list[bytes], rules: FaceRules) -> list[IdentityScore]:
    from bot.faces import checks

    models = _worker_models()
    reference = checks.subject_embedding(models, selfie, rules)
    return [checks.score_output(models, reference, output, rules) for output in outputs]
