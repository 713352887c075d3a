"""`backends.base.Backend` for the local GPU: the bot's side of the GPU worker process.

`submit` hands the job to the worker and answers `processing` at once; when the worker finishes
it, the backend calls its listeners with the job's track id (the job engine's `nudge`, the same
wake-up a ModelsLab webhook gives), and `fetch` answers `success` with `local://` links that
`download_output` serves from memory until the engine has re-hosted them.

The worker is started with `start()` (loading and compiling can take minutes) and started again
by the next `submit` if it dies; jobs it was running when it died fail, and are refunded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import secrets
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

from backends.base import ProviderResult, RequestSource, ResultStatus, SubmitRequest
from backends.errors import (
    InvalidRequest,
    OperationNotServed,
    OutputTooLarge,
    OutputUnavailable,
    ProviderUnavailable,
    UnknownProviderJob,
)
from backends.local import process as worker_process
from backends.local.config import WorkerConfig
from backends.params import MAX_SEED, GenerationParams, Operation

log = logging.getLogger(__name__)

OUTPUT_SCHEME = "local"
# Finished jobs' images wait this long for the engine to download them.
RESULT_TTL_SECONDS = 3600.0
DEFAULT_ETA_SECONDS = 10.0
# After a failed start, submits fail at once for this long instead of loading again each time.
RESTART_BACKOFF_SECONDS = 60.0
# How many recent images the median seconds per image is taken over.
RECENT_IMAGES = 50


@dataclass(frozen=True)
class ChildWorkerStatus:
    """The child worker as the bot's process knows it (`LocalBackend.fleet_status`): what an
    operator sees in /admin workers on a single machine. Times are seconds since the epoch."""

    alive: bool
    device: str
    operations: tuple[str, ...]
    capacity: int
    jobs_done: int
    jobs_failed: int
    seconds_per_image: float | None  # median of the recent images
    started_at: float | None  # the current process's start; None if it is not running
    last_finished_at: float | None


class WorkerStartFailed(Exception):
    """The worker could not load its models. The message is one line for the operator."""


@dataclass
class _Job:
    operation: Operation
    seed: int
    track_id: str | None
    submitted: float = field(default_factory=time.monotonic)
    result: ProviderResult | None = None
    outputs: list[bytes] = field(default_factory=list)
    finished: float | None = None
    # Why the pipeline refused the request (no face, an option it lacks): shown to the user.
    refusal: str | None = None


class LocalBackend:
    name = "local"

    def __init__(
        self,
        config: WorkerConfig,
        *,
        capacity: int = 2,
        start_timeout: float = 1800.0,
    ) -> None:
        self.config = config
        # How many jobs the worker holds at once: one running, the rest staged behind it so
        # that the GPU never waits for the bot between jobs. The dispatcher's cap is this.
        self.capacity = capacity
        self._start_timeout = start_timeout
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._jobs: dict[str, _Job] = {}
        self._durations: dict[Operation, deque[float]] = {}
        self._listeners: list[Callable[[str], object]] = []
        self._ready: asyncio.Future[list[str]] | None = None
        self._starting: asyncio.Lock | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._start_failure: tuple[float, str] | None = None
        self.operations: frozenset[Operation] = frozenset()
        self._warned_unchecked = False
        self._jobs_done = 0
        self._jobs_failed = 0
        self._image_seconds: deque[float] = deque(maxlen=RECENT_IMAGES)
        self._started_at: float | None = None
        self._last_finished_at: float | None = None

    def listen(self, callback: Callable[[str], object]) -> None:
        """Call `callback(track_id)` whenever a job finishes, so it is fetched without delay."""
        self._listeners.append(callback)

    def adopt(self, provider_id: str, request: RequestSource) -> None:
        """Nothing to keep: a job is fetched by its id alone (the worker forgets its jobs when
        it stops, and says so)."""

    # ---- the worker process ---------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker and wait until its pipelines are loaded and warmed up."""
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._process is not None and self._process.is_alive():
                return
            if self._start_failure and time.monotonic() < self._start_failure[0]:
                raise WorkerStartFailed(self._start_failure[1])
            try:
                await self._spawn()
            except WorkerStartFailed as exc:
                self._start_failure = (time.monotonic() + RESTART_BACKOFF_SECONDS, str(exc))
                raise
            self._start_failure = None

    async def _spawn(self) -> None:
        # Jobs of a worker that died are failed here too, in case its reader thread has not yet
        # told the loop (they would otherwise wait for the job timeout).
        self._fail_unfinished()
        self._loop = asyncio.get_running_loop()
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe(duplex=True)
        process = context.Process(
            target=worker_process.main, args=(theirs, self.config), name="gpu-worker", daemon=True
        )
        process.start()
        theirs.close()
        self._process, self._conn = process, ours
        self._ready = self._loop.create_future()
        threading.Thread(target=self._read, args=(ours, process), daemon=True).start()
        try:
            operations = await asyncio.wait_for(asyncio.shield(self._ready), self._start_timeout)
        except TimeoutError:
            await self._kill()
            raise WorkerStartFailed(
                f"the GPU worker did not load its models within {self._start_timeout:.0f} s"
            ) from None
        except WorkerStartFailed:
            await self._kill()
            raise
        self.operations = frozenset(Operation(op) for op in operations)
        self._started_at = time.time()
        log.info("GPU worker ready: %s", ", ".join(sorted(self.operations)))
        if not self._warned_unchecked:
            self._warned_unchecked = True
            log.warning(
                "the local GPU backend has no NSFW image checker: the safety level does not "
                "apply to its images (the prompt word filter does)"
            )

    def _read(self, conn: Connection, process: multiprocessing.process.BaseProcess) -> None:
        """The reader thread: every message from the worker, handed to the event loop."""
        assert self._loop is not None
        try:
            while True:
                message = conn.recv()
                self._loop.call_soon_threadsafe(self._receive, message)
        except (EOFError, OSError):
            with contextlib.suppress(RuntimeError):  # the loop is closed: we are shutting down
                self._loop.call_soon_threadsafe(self._worker_gone, process)

    def _receive(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "ready":
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(message[1])
        elif kind == "failed":
            if self._ready is not None and not self._ready.done():
                self._ready.set_exception(WorkerStartFailed(message[1]))
        elif kind == "done":
            _, job_id, outputs, seconds = message
            self._finish(job_id, ResultStatus.SUCCESS, outputs=outputs, seconds=seconds)
        elif kind == "refused":
            self._finish(message[1], ResultStatus.FAILED, reason=message[2], refused=True)
        elif kind == "error":
            self._finish(message[1], ResultStatus.FAILED, reason=message[2])

    def _worker_gone(self, process: multiprocessing.process.BaseProcess) -> None:
        if process is not self._process:
            return
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(
                WorkerStartFailed("the GPU worker stopped while loading its models (see its log)")
            )
        self._process = None
        self._fail_unfinished()
        log.warning("the GPU worker stopped (exit code %s)", process.exitcode)

    def _fail_unfinished(self) -> None:
        for job_id, job in list(self._jobs.items()):
            if job.result is None:
                self._finish(job_id, ResultStatus.FAILED, reason="the GPU worker stopped")

    async def _kill(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.kill()
        await asyncio.to_thread(process.join, 10)

    async def _send(self, message: tuple[Any, ...]) -> None:
        conn = self._conn
        if conn is None:
            raise ProviderUnavailable("the GPU worker is not running")

        def send() -> None:
            with self._send_lock:
                conn.send(message)

        try:
            # Off the event loop: a selfie is megabytes, more than a pipe holds at once.
            await asyncio.to_thread(send)
        except (OSError, ValueError):
            raise ProviderUnavailable("the GPU worker is not running") from None

    # ---- Backend ------------------------------------------------------------------------

    async def submit(self, request: SubmitRequest) -> ProviderResult:
        params = request.params
        _check_served(params, self.config.operations)
        if self._process is None or not self._process.is_alive():
            try:
                await self.start()
            except WorkerStartFailed as exc:
                raise ProviderUnavailable(str(exc)) from None
        self._forget_old_results()
        seed = params.seed
        if seed is None:
            seed = secrets.randbelow(MAX_SEED - params.samples + 2)
        job_id = f"local-{secrets.token_hex(8)}"
        self._jobs[job_id] = _Job(params.operation, seed, request.track_id)
        checked = params.with_seed(seed).to_dict()
        await self._send(("job", job_id, checked, request.face_image, request.pose_image))
        return ProviderResult(
            ResultStatus.PROCESSING, provider_id=job_id, eta_seconds=self._eta(params.operation)
        )

    async def fetch(self, operation: Operation, provider_id: str) -> ProviderResult:
        self._forget_old_results()
        job = self._jobs.get(provider_id)
        if job is None:
            raise UnknownProviderJob(f"the GPU worker does not know job {provider_id}")
        if job.refusal is not None:
            raise InvalidRequest(job.refusal)
        if job.result is not None:
            return job.result
        left = job.submitted + self._eta(job.operation) - time.monotonic()
        return ProviderResult(
            ResultStatus.PROCESSING, provider_id=provider_id, eta_seconds=max(0.0, left)
        )

    async def download_output(self, url: str, *, max_bytes: int) -> bytes:
        parts = urlsplit(url)
        job = self._jobs.get(parts.netloc) if parts.scheme == OUTPUT_SCHEME else None
        index = parts.path.strip("/").removesuffix(".png")
        if job is None or not index.isdigit() or int(index) >= len(job.outputs):
            raise OutputUnavailable("that image is no longer held by the GPU worker")
        data = job.outputs[int(index)]
        if len(data) > max_bytes:
            raise OutputTooLarge(f"the image is larger than {max_bytes} bytes")
        return data

    def owns_output(self, url: str) -> bool:
        return urlsplit(url).scheme == OUTPUT_SCHEME

    async def aclose(self) -> None:
        process = self._process
        if process is None:
            return
        with contextlib.suppress(ProviderUnavailable):
            await self._send(("stop",))
        await asyncio.to_thread(process.join, 30)
        if process.is_alive():
            await self._kill()
        self._process = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    # ---- bookkeeping --------------------------------------------------------------------

    def _finish(
        self,
        job_id: str,
        status: ResultStatus,
        *,
        outputs: list[bytes] | None = None,
        seconds: float | None = None,
        reason: str | None = None,
        refused: bool = False,
    ) -> None:
        job = self._jobs.get(job_id)
        if job is None or job.result is not None:
            return
        if refused:
            job.refusal = reason
        job.outputs = outputs or []
        job.finished = time.monotonic()
        urls = tuple(f"{OUTPUT_SCHEME}://{job_id}/{i}.png" for i in range(len(job.outputs)))
        job.result = ProviderResult(
            status,
            provider_id=job_id,
            outputs=urls,
            message=reason,
            generation_time=seconds,
            seed=job.seed,
        )
        if seconds is not None:
            self._durations.setdefault(job.operation, deque(maxlen=20)).append(seconds)
        self._count(status, refused=refused, seconds=seconds, images=len(job.outputs))
        if job.track_id is not None:
            for listener in self._listeners:
                listener(job.track_id)

    def fleet_status(self) -> ChildWorkerStatus:
        """The child worker now: whether it runs, where, and its figures since the bot began."""
        process = self._process
        alive = process is not None and process.is_alive()
        served = self.operations if alive else frozenset(self.config.operations)
        recent = self._image_seconds
        return ChildWorkerStatus(
            alive=alive,
            device=self.config.runtime.device,
            operations=tuple(op.value for op in Operation if op in served),
            capacity=self.capacity,
            jobs_done=self._jobs_done,
            jobs_failed=self._jobs_failed,
            seconds_per_image=statistics.median(recent) if recent else None,
            started_at=self._started_at if alive else None,
            last_finished_at=self._last_finished_at,
        )

    def _count(
        self, status: ResultStatus, *, refused: bool, seconds: float | None, images: int
    ) -> None:
        """A job's end in the figures: a refused request is the request's fault, not the
        worker's, so it counts as neither done nor failed."""
        self._last_finished_at = time.time()
        if status == ResultStatus.SUCCESS:
            self._jobs_done += 1
            if seconds is not None and images:
                self._image_seconds.append(seconds / images)
        elif not refused:
            self._jobs_failed += 1

    def _eta(self, operation: Operation) -> float:
        recent = self._durations.get(operation)
        return statistics.median(recent) if recent else DEFAULT_ETA_SECONDS

    def _forget_old_results(self) -> None:
        cutoff = time.monotonic() - RESULT_TTL_SECONDS
        for job_id, job in list(self._jobs.items()):
            if job.finished is not None and job.finished < cutoff:
                del self._jobs[job_id]


def _check_served(params: GenerationParams, operations: tuple[Operation, ...]) -> None:
    """What this GPU cannot make, refused before anything is sent (a fallback can take it)."""
    if params.operation not in operations:
        raise OperationNotServed(f"this bot's GPU does not serve {params.operation}")
    check_pipeline_limits(params)


def check_pipeline_limits(params: GenerationParams) -> None:
    """What the local pipelines cannot make whatever GPU they run on (the child worker's, or a
    fleet's): OperationNotServed, so that a fallback generator can take it."""
    if params.controlnet_selection and "depth" in params.controlnet_selection:
        raise OperationNotServed("this bot's GPU has no depth ControlNet: use pose or canny")
    sides = (params.width, params.height)
    if params.operation != Operation.FLUX_HEADSHOT and any(s and s % 8 for s in sides):
        raise OperationNotServed(
            "this bot's GPU makes images whose width and height are multiples of 8"
        )
