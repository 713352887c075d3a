"""The face toolkit the bot uses: the intake check and the identity gate, off the event loop.

Why processes, not threads: dlib releases the GIL while it detects, but not while its ResNet
embeds a face (about 160 ms on one core here), so a thread doing it would stall the event
loop for that long. Each worker is a spawned interpreter (never forked from this threaded
asyncio process) that loads its own models once, runs below the service in CPU priority, and
answers one call at a time. A compare() call runs in one worker from start to end, so the
embeddings never leave it: only verdicts, distances and times come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import BrokenExecutor, ProcessPoolExecutor
from typing import TypeVar

from bot.faces import checks
from bot.faces.identity import IdentityScore
from bot.faces.models import FaceModels, FaceModelsMissing, load_models
from bot.faces.rules import FaceRules
from bot.faces.verdict import SelfieCheck

__all__ = ["FaceToolkit"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class FaceToolkit:
    """Faces on the CPU with dlib, in `workers` worker processes (one call at a time each)."""

    def __init__(self, rules: FaceRules, *, workers: int = 1) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.rules = rules
        self._workers = workers
        self._pool = self._new_pool()

    async def start(self) -> None:
        """Start the workers and load their models; raise FaceModelsMissing if they cannot."""
        await asyncio.gather(*(self._run(_ready) for _ in range(self._workers)))

    async def check_selfie(self, image: bytes) -> SelfieCheck:
        """The intake verdict on a sanitised selfie."""
        check = await self._run(_check_selfie, image, self.rules)
        log.debug("face check: %s in %.0f ms", check.verdict, check.seconds * 1000)
        return check

    async def compare(self, selfie: bytes, outputs: Sequence[bytes]) -> list[IdentityScore]:
        """Each output's face compared with the selfie's, in the outputs' order."""
        scores = await self._run(_compare, selfie, list(outputs), self.rules)
        for score in scores:
            log.debug("identity check: passed=%s in %.0f ms", score.passed, score.seconds * 1000)
        return scores

    async def aclose(self) -> None:
        pool = self._pool
        await asyncio.get_running_loop().run_in_executor(
            None, functools.partial(pool.shutdown, wait=True, cancel_futures=True)
        )

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
        )

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        pool = self._pool
        try:
            return await loop.run_in_executor(pool, functools.partial(fn, *args))
        except BrokenExecutor:
            # A worker died (killed, or crashed in native code): later calls get fresh ones.
            log.error("a face worker died; starting new ones")
            if self._pool is pool:
                self._pool = self._new_pool()
                pool.shutdown(wait=False, cancel_futures=True)
            raise


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
    return checks.check_selfie(_worker_models(), image, rules)


def _compare(selfie: bytes, outputs: list[bytes], rules: FaceRules) -> list[IdentityScore]:
    models = _worker_models()
    reference = checks.largest_face_embedding(models, selfie, rules)
    return [checks.score_output(models, reference, output, rules) for output in outputs]
