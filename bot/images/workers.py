"""The decode workers: a small pool of processes, started ahead, that do all image work.

Why processes: a decode cannot be stopped from the outside while it runs in a thread, and a
hostile file's decode is what must be stopped. Each call has a time limit; a worker that
overruns it is killed and replaced at once. Each worker also runs under an address-space
limit, a backstop for what the budget estimate misses.

Why its own pool: image work never runs on asyncio's default thread pool, which serves the
image store, so uploads cannot starve `/images`, the database or webhooks. At most `workers`
decodes run at once; a user's upload is refused ("busy, try again") when it would wait behind
`max_waiting` others, or longer than `max_wait_seconds` at the pace the calls go: waiting is
cheap (the bytes are already here) but unbounded waiting is unbounded latency. The pace is the
longer of the recent calls' mean time and the oldest running call's age, so a burst of cheap
selfies (a server's announcement) waits its turn while a flood of costly decodes is refused
after a few seconds' worth. Our own work (checking a generator's output, shrinking our own
images for a platform) always waits its turn: refusing it would fail a paid job.

Each worker is a fresh interpreter (`python -m bot.images.decoder`), never forked from this
threaded asyncio process; it imports only Pillow, this package and the image store's folder
writer (`bot.images.keep`: a worker stores what it has checked where the store is a folder).
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import contextlib
import logging
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TypeVar

from bot.images.budget import DEFAULT_BUDGET
from bot.images.errors import BUSY, CRASHED, TOO_SLOW, ImageRejected
from bot.images.keep import inspect_and_keep, sanitise_and_keep
from bot.images.sanitise import (
    ImageInfo,
    SanitisedImage,
    fit_within,
    inspect_output,
    sanitise_selfie,
)
from bot.images.wire import receive_result, send_call
from storage.imagestore import ImageStore, validate_key

__all__ = ["ImageWorkers", "image_workers", "install", "uninstall"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_BOOT_SECONDS = 60.0
# A decode waiting for a core gets this many times its CPU limit in wall-clock time.
_STARVED_FACTOR = 4
# The weight of the last call in the moving average of calls' times.
_PACE_WEIGHT = 0.2
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
# The environment variables a worker inherits (and LC_*): none of them holds a secret.
_PASSED_ON = frozenset(
    {"PATH", "LANG", "LANGUAGE", "HOME", "TMPDIR", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
)


class ImageWorkers:
    """`await workers.sanitise(data, max_bytes=...)`, `inspect(data)`, `fit(...)`; `run` for
    any picklable function with a plain answer. Usable from any event loop and thread;
    `aclose` when done."""

    def __init__(
        self,
        *,
        workers: int = 2,
        time_limit: float = 5.0,
        max_waiting: int = 512,
        max_wait_seconds: float = 10.0,
        memory_budget: int = DEFAULT_BUDGET,
    ) -> None:
        self.time_limit = time_limit
        self.memory_budget = memory_budget
        self._max_waiting = max_waiting
        self._max_wait = max_wait_seconds
        # The pace: the recent calls' mean time (a moving average), and when each running
        # call started, by worker.
        self._call_seconds = 0.0
        self._started: dict[_Worker, float] = {}
        self._closed = False
        self._workers = [_Worker(memory_budget) for _ in range(workers)]
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="image-work")
        self._lock = threading.Lock()
        self._idle = collections.deque(self._workers)
        self._waiters: collections.deque[asyncio.Future[_Worker]] = collections.deque()

    @property
    def pids(self) -> list[int]:
        """The worker processes' ids (for measuring them)."""
        return [pid for worker in self._workers if (pid := worker.pid) is not None]

    async def start(self) -> None:
        """Start every worker now and wait until each is ready, its codecs warmed, so that the
        first image waits for none of it (a worker's start-up took about 70 ms, and its first
        call 6 ms more than the next). RuntimeError if one cannot start: a service whose
        every image would fail does not start."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(
                *(loop.run_in_executor(self._threads, w.ensure_ready) for w in self._workers)
            )
        except ImageRejected:
            raise RuntimeError(
                "an image worker (python -m bot.images.decoder) did not start: see the log"
            ) from None

    async def sanitise(
        self, data: bytes, *, max_bytes: int, subject: str = "selfie"
    ) -> SanitisedImage:
        """A user's upload: refused with a "busy" line when too many wait already."""
        return await self.run(
            sanitise_selfie,
            data,
            max_bytes=max_bytes,
            memory_budget=self.memory_budget,
            subject=subject,
            refuse_when_busy=True,
        )

    async def sanitise_into(
        self, store: ImageStore, key: str, data: bytes, *, max_bytes: int, subject: str
    ) -> SanitisedImage:
        """`sanitise`, the result stored at `key`: by the worker, where the store is a folder
        here (`bot.images.keep`), else from here."""
        writer = store.local_writer()
        if writer is None:
            image = await self.sanitise(data, max_bytes=max_bytes, subject=subject)
            await store.put(image.data, content_type=image.content_type, key=key)
            return image
        return await self.run(
            sanitise_and_keep,
            data,
            writer,
            key,
            max_bytes=max_bytes,
            memory_budget=self.memory_budget,
            subject=subject,
            refuse_when_busy=True,
        )

    async def inspect(self, data: bytes) -> ImageInfo:
        return await self.run(inspect_output, data, memory_budget=self.memory_budget)

    async def inspect_into(self, store: ImageStore, data: bytes) -> tuple[ImageInfo, str]:
        """`inspect`, the image stored, content-addressed: what it is, and its key."""
        writer = store.local_writer()
        if writer is None:
            info = await self.inspect(data)
            return info, await store.put(data, content_type=info.content_type)
        info, key = await self.run(inspect_and_keep, data, writer, memory_budget=self.memory_budget)
        return info, validate_key(key)

    async def fit(self, data: bytes, content_type: str, max_bytes: int) -> tuple[bytes, str] | None:
        if len(data) <= max_bytes:  # nothing to decode
            return data, content_type
        return await self.run(
            fit_within, data, content_type, max_bytes, memory_budget=self.memory_budget
        )

    async def run(
        self, fn: Callable[..., T], /, *args: Any, refuse_when_busy: bool = False, **kwargs: Any
    ) -> T:
        """`fn(*args, **kwargs)` in a worker, within the time limit. ImageRejected for what
        the function refuses, for an overrun (too_slow), a crash or an answer that is not a
        plain value or an image result (crashed) or, with `refuse_when_busy`, a full queue
        (busy)."""
        if self._closed:
            raise RuntimeError("the image workers are closed")
        worker = await self._take(refuse_when_busy)
        future = self._threads.submit(self._call, worker, fn, args, kwargs)
        return await asyncio.wrap_future(future)

    async def aclose(self) -> None:
        self.close_now()

    def close_now(self) -> None:
        """Kill every worker (a call in flight fails as crashed) and fail every waiting call."""
        self._closed = True
        with self._lock:
            waiters, self._waiters = list(self._waiters), collections.deque()
        for waiter in waiters:
            with contextlib.suppress(RuntimeError):  # its loop is closed
                waiter.get_loop().call_soon_threadsafe(_fail, waiter)
        for worker in self._workers:
            worker.closed = True
            worker.stop()
        self._threads.shutdown(wait=False, cancel_futures=True)

    # --- handing workers out -----------------------------------------------------------

    async def _take(self, refuse_when_busy: bool) -> _Worker:
        with self._lock:
            if self._idle:
                return self._idle.popleft()
            if refuse_when_busy and self._too_busy():
                raise ImageRejected(BUSY, reason="busy")
            waiter: asyncio.Future[_Worker] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())
            raise

    def _too_busy(self) -> bool:
        """Whether an upload would wait behind too many others, or for too long (see the
        module's docstring). Called holding the lock."""
        ahead = len(self._waiters)
        if ahead >= self._max_waiting:
            return True
        now = time.monotonic()
        pace = max([self._call_seconds, *(now - started for started in self._started.values())])
        return (ahead + 1) * pace / len(self._workers) > self._max_wait

    def _release(self, worker: _Worker) -> None:
        """Give the worker to the first caller still waiting, else back to the idle ones.
        Called from any thread; a waiter belongs to its own event loop."""
        with self._lock:
            while self._waiters:
                waiter = self._waiters.popleft()
                try:
                    waiter.get_loop().call_soon_threadsafe(self._hand_over, waiter, worker)
                except RuntimeError:  # its loop is closed
                    continue
                return
            self._idle.append(worker)

    def _hand_over(self, waiter: asyncio.Future[_Worker], worker: _Worker) -> None:
        if waiter.done():  # cancelled meanwhile: the next one gets it
            self._release(worker)
        else:
            waiter.set_result(worker)

    def _call(
        self, worker: _Worker, fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        started = time.monotonic()
        with self._lock:
            self._started[worker] = started
        try:
            return worker.call(fn, args, kwargs, self.time_limit)
        finally:
            took = time.monotonic() - started
            with self._lock:
                del self._started[worker]
                self._call_seconds += _PACE_WEIGHT * (took - self._call_seconds)
            self._release(worker)


class _Worker:
    """One decode process and its pipe; replaced when it is killed or dies."""

    def __init__(self, memory_budget: int) -> None:
        self._memory_budget = memory_budget
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._ready = False
        self.closed = False  # the pool is closing: never start another process

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def ensure_started(self) -> None:
        if self._process is not None and self._process.poll() is None:
            return
        self.stop()
        if self.closed:
            raise ImageRejected(CRASHED, reason="crashed")
        ours, theirs = socket.socketpair()
        with theirs:
            command = [sys.executable, "-m", "bot.images.decoder"]
            command += [str(theirs.fileno()), str(self._memory_budget)]
            self._process = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
                command,
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                env=_worker_environment(),
            )
        self._conn = Connection(ours.detach())
        self._ready = False

    def ensure_ready(self) -> None:
        """Start the process if it is not running, and wait for its "ready" (its imports and
        warm-up are not part of any call's time limit). ImageRejected (crashed) if it cannot."""
        try:
            self._wait_ready()
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            log.warning("image worker %s did not start: %s", self.pid, type(exc).__name__)
            self.stop()
            raise ImageRejected(CRASHED, reason="crashed") from None

    def _wait_ready(self) -> None:
        self.ensure_started()
        assert self._conn is not None
        if not self._ready:
            if not self._conn.poll(_BOOT_SECONDS):
                raise OSError("the image worker did not start")
            receive_result(self._conn)
            self._ready = True

    def call(
        self,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        time_limit: float,
    ) -> T:
        try:
            self._wait_ready()
            assert self._conn is not None
            cpu_before = self._cpu_seconds()
            send_call(self._conn, fn, args, kwargs)
            if not self._answers_within(time_limit, cpu_before):
                log.warning("image work overran %.1f s: worker %s killed", time_limit, self.pid)
                self._replace()
                raise ImageRejected(TOO_SLOW, reason="too_slow")
            status, value = receive_result(self._conn)
        except (EOFError, OSError, pickle.UnpicklingError) as exc:
            log.warning("image worker %s failed: %s", self.pid, type(exc).__name__)
            self._replace()
            raise ImageRejected(CRASHED, reason="crashed") from None
        if status == "ok":
            return value  # type: ignore[no-any-return]
        raise value

    def _answers_within(self, time_limit: float, cpu_before: float | None) -> bool:
        """Whether the answer came before the call used `time_limit` seconds of the worker's
        CPU. The limit is on CPU, not on the clock: on a busy host a decode that is only
        waiting for a core is not the hostile one. The clock still stops it at
        `_STARVED_FACTOR` times the limit."""
        assert self._conn is not None
        deadline = time.monotonic() + _STARVED_FACTOR * time_limit
        wait = time_limit
        while not self._conn.poll(wait):
            cpu_now = self._cpu_seconds()
            if cpu_before is None or cpu_now is None:
                return False  # no CPU figures here: the clock decides
            left = min(time_limit - (cpu_now - cpu_before), deadline - time.monotonic())
            if left <= 0:
                return False
            wait = max(left, 0.01)
        return True

    def _cpu_seconds(self) -> float | None:
        """The worker's CPU time so far (user and system), from /proc; None where unreadable."""
        if self._process is None:
            return None
        try:
            with open(f"/proc/{self._process.pid}/stat", "rb") as stat:
                # Fields after the command name, which sits in parentheses and may hold spaces.
                fields = stat.read().rsplit(b")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        except (OSError, IndexError, ValueError):
            return None

    def _replace(self) -> None:
        self.stop()
        if self.closed:
            return
        try:
            self.ensure_started()
        except OSError as exc:  # out of processes or descriptors: the next call tries again
            log.error("image worker could not be restarted: %s", exc)

    def stop(self) -> None:
        """Kill the process: it holds nothing worth a graceful exit."""
        process, conn = self._process, self._conn
        self._process = self._conn = None
        if process is not None:
            process.kill()
            process.wait()
        if conn is not None:
            conn.close()


def _fail(waiter: asyncio.Future[_Worker]) -> None:
    if not waiter.done():
        waiter.set_exception(RuntimeError("the image workers are closed"))


def _worker_environment() -> dict[str, str]:
    """What a worker needs of this environment, and no secret: it decodes hostile files, so
    it gets no keys, tokens or database URL to leak. This package is importable however the
    service was started."""
    root = str(Path(__file__).resolve().parents[2])
    env = {
        name: value
        for name, value in os.environ.items()
        if name in _PASSED_ON or name.startswith("LC_")
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


# --- the process's pool --------------------------------------------------------------

_installed: list[ImageWorkers] = []
_default: ImageWorkers | None = None
_default_lock = threading.Lock()


def install(workers: ImageWorkers) -> None:
    """Make `workers` the pool `image_workers()` returns (the app does, while it runs)."""
    _installed.append(workers)


def uninstall(workers: ImageWorkers) -> None:
    if workers in _installed:
        _installed.remove(workers)


def image_workers() -> ImageWorkers:
    """The pool the running app installed; outside an app (a test, a tool), a default pool
    started on first use and stopped at exit."""
    if _installed:
        return _installed[-1]
    global _default
    with _default_lock:
        if _default is None:
            _default = ImageWorkers()
            atexit.register(_default.close_now)
        return _default
