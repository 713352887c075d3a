"""`backends.base.Backend` for the fleet: GPU workers on any number of machines, fed through a
queue in the cluster's PostgreSQL (`storage.gpu_queue`).

`submit` puts the job on the queue of its operation, where only the workers serving that
operation take it, and answers `processing`. A worker writes the images to our image store and
its result row to the database, with a NOTIFY that wakes the job's engine (the same nudge a
ModelsLab webhook gives); `fetch` reads that row and answers `success` with `stored:` links,
which the rehoster records without downloading anything.

A worker killed mid-job stops heartbeating: its job is *stalled*. The next fetch hands it back
to the queue, once; stalled a second time, it fails (and is refunded, or handed to the
fallback generator). Nothing is held in this process's memory: after a restart, or on another
replica, a job is fetched by its id alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import statistics
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta

from backends.base import (
    Backend,
    ProviderResult,
    RequestSource,
    ResultStatus,
    StoredOutput,
    SubmitRequest,
)
from backends.errors import (
    BackendError,
    InvalidRequest,
    OperationNotServed,
    OutputUnavailable,
    ProviderUnavailable,
    UnknownProviderJob,
)
from backends.fallback import FallbackBackend
from backends.local.backend import check_pipeline_limits
from backends.params import MAX_SEED, Operation
from storage.gpu_queue import (
    RESULTS_CHANNEL,
    GenerationResult,
    GpuQueue,
    QueuedGeneration,
    QueueState,
)
from storage.gpu_workers import WorkerRecord, WorkerRegistry

log = logging.getLogger(__name__)

PROVIDER_PREFIX = "gpu-"
DEFAULT_ETA_SECONDS = 10.0
# How long the live workers, as read from the registry, are taken as they are.
LIVE_CACHE_SECONDS = 0.5
# Result rows are read by the job's fetch within seconds; kept this long for a bot that was
# down meanwhile, then deleted (every HOUSEKEEPING_SECONDS).
RESULTS_KEPT = timedelta(days=2)
HOUSEKEEPING_SECONDS = 3600.0
STOPPED_TWICE = "the GPU worker stopped twice while making it"
# A worker silent or draining is still expected back for this many timeouts (a restart loads
# its models for minutes): its operations' jobs wait for it meanwhile, rather than fail.
EXPECTED_BACK_TIMEOUTS = 10
# Registry rows of workers silent this long are dropped (stopped or killed ones).
FORGET_WORKERS_AFTER = timedelta(hours=1)
NO_WORKER_ANY_MORE = "no GPU worker serves it any more"

Listen = Callable[[str, Callable[[str], object]], None]


class FleetBackend:
    name = "local"

    def __init__(
        self,
        queue: GpuQueue,
        workers: WorkerRegistry,
        *,
        worker_timeout: float,
        listen: Listen,
    ) -> None:
        self.queue = queue
        self.workers = workers
        self.worker_timeout = worker_timeout
        self._listen = listen
        self._listeners: list[Callable[[str], object]] = []
        self._seen: tuple[float, list[WorkerRecord]] | None = None
        self._watcher: asyncio.Task[None] | None = None

    # ---- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Open the queue and hear its results. Nothing to load: the workers hold the models."""
        async with _unavailable("the GPU queue cannot be opened"):
            await self.queue.open()
        self._listen(RESULTS_CHANNEL, self._finished)
        self._watcher = asyncio.create_task(self._watch(), name="gpu-fleet-watcher")

    async def aclose(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        await self.queue.aclose()

    def listen(self, callback: Callable[[str], object]) -> None:
        """Call `callback(track_id)` when a job may have ended (its result row came, or its
        worker stopped heartbeating)."""
        self._listeners.append(callback)

    def adopt(self, provider_id: str, request: RequestSource) -> None:
        """Nothing to keep: the queue and its results are in the database."""

    def _finished(self, track_id: str) -> None:
        for listener in self._listeners:
            listener(track_id)

    async def _watch(self) -> None:
        """Wake the jobs whose worker died (their fetch requeues or ends them) a third of the
        timeout after at most; now and then, delete old result rows."""
        housekept = time.monotonic()
        while True:
            await asyncio.sleep(self.worker_timeout / 3)
            try:
                for track_id in await self.queue.stalled_tracks():
                    self._finished(track_id)
                if time.monotonic() - housekept >= HOUSEKEEPING_SECONDS:
                    housekept = time.monotonic()
                    await self.queue.forget_results(RESULTS_KEPT)
                    await self.workers.prune(older_than=FORGET_WORKERS_AFTER.total_seconds())
            except Exception as exc:
                log.warning("checking the GPU queue for stalled jobs failed: %s", exc)

    # ---- the workers ------------------------------------------------------------------------

    async def live_workers(self) -> list[WorkerRecord]:
        """The workers heartbeating now and not draining (read at most every half second)."""
        return [worker for worker in await self._workers() if worker.live]

    async def expected_operations(self) -> frozenset[str]:
        """The operations of the workers live now or expected back: draining, or silent for
        less than EXPECTED_BACK_TIMEOUTS timeouts (restarting, reloading their models)."""
        horizon = self.worker_timeout * EXPECTED_BACK_TIMEOUTS
        return frozenset(
            operation
            for worker in await self._workers()
            if worker.live or worker.heartbeat_age <= horizon
            for operation in worker.operations
        )

    async def _workers(self) -> list[WorkerRecord]:
        now = time.monotonic()
        if self._seen is None or now - self._seen[0] > LIVE_CACHE_SECONDS:
            async with _unavailable("the GPU worker registry cannot be read"):
                workers = await self.workers.workers(timeout=self.worker_timeout)
            self._seen = (now, workers)
        return self._seen[1]

    async def _eta(self, operation: Operation, samples: int) -> float:
        serving = [w for w in await self.live_workers() if operation in w.operations]
        speeds = [w.seconds_per_image for w in serving if w.seconds_per_image is not None]
        return statistics.median(speeds) * samples if speeds else DEFAULT_ETA_SECONDS

    # ---- Backend ----------------------------------------------------------------------------

    async def submit(self, request: SubmitRequest) -> ProviderResult:
        params = request.params
        operation = params.operation
        if not any(operation in w.operations for w in await self.live_workers()):
            raise OperationNotServed(f"no GPU worker serves {operation} right now")
        check_pipeline_limits(params)
        if request.face_key is None or request.track_id is None:
            # The engine always sends both; without them a worker could not read the selfie.
            raise OperationNotServed("the GPU workers need the selfie in the image store")
        seed = params.seed
        if seed is None:
            seed = secrets.randbelow(MAX_SEED - params.samples + 2)
        generation = QueuedGeneration(
            track_id=request.track_id,
            params=params.with_seed(seed).to_dict(),
            face_key=request.face_key,
            pose_key=request.pose_key,
        )
        async with _unavailable("the GPU queue cannot be reached"):
            queue_id = await self.queue.send(generation)
        return ProviderResult(
            ResultStatus.PROCESSING,
            provider_id=f"{PROVIDER_PREFIX}{queue_id}",
            eta_seconds=await self._eta(operation, params.samples),
            seed=seed,
        )

    async def fetch(self, operation: Operation, provider_id: str) -> ProviderResult:
        queue_id = _queue_id(provider_id)
        async with _unavailable("the GPU queue cannot be reached"):
            result = await self.queue.result(queue_id)
            if result is not None:
                return _answer(provider_id, result)
            status = await self.queue.status(queue_id)
            if status.state == QueueState.STALLED:
                if status.requeued == 0:
                    if await self.queue.requeue(queue_id):
                        log.warning("%s: its GPU worker stopped; back in the queue", provider_id)
                elif await self.queue.give_up(queue_id):
                    log.warning("%s: its GPU worker stopped again; given up", provider_id)
                    return ProviderResult(
                        ResultStatus.FAILED, provider_id=provider_id, message=STOPPED_TWICE
                    )
            elif status.state == QueueState.WAITING:
                if str(operation) not in await self.expected_operations() and (
                    await self.queue.withdraw(queue_id)
                ):
                    log.warning("%s: no GPU worker serves %s any more", provider_id, operation)
                    return ProviderResult(
                        ResultStatus.FAILED, provider_id=provider_id, message=NO_WORKER_ANY_MORE
                    )
            elif status.state == QueueState.GONE:
                # Its worker may have written the result and ended the job since we looked.
                result = await self.queue.result(queue_id)
                if result is not None:
                    return _answer(provider_id, result)
                raise UnknownProviderJob(f"the GPU queue does not know job {provider_id}")
        return ProviderResult(
            ResultStatus.PROCESSING,
            provider_id=provider_id,
            eta_seconds=await self._eta(operation, 1),
        )

    def owns_output(self, url: str) -> bool:
        return StoredOutput.parse(url) is not None

    async def download_output(self, url: str, *, max_bytes: int) -> bytes:
        raise OutputUnavailable("the GPU workers' images are in the image store already")


def fleet_of(backend: Backend) -> FleetBackend | None:
    """The fleet among the generators (first, or the fallback); None if it is not one."""
    if isinstance(backend, FallbackBackend):
        return fleet_of(backend.primary) or fleet_of(backend.secondary)
    return backend if isinstance(backend, FleetBackend) else None


def _answer(provider_id: str, result: GenerationResult) -> ProviderResult:
    if result.refused:
        raise InvalidRequest(result.reason or "the GPU worker refused the request")
    if not result.ok:
        return ProviderResult(ResultStatus.FAILED, provider_id=provider_id, message=result.reason)
    outputs = tuple(
        StoredOutput(image.key, image.content_type, image.width, image.height, image.size_bytes).url
        for image in result.images
    )
    return ProviderResult(
        ResultStatus.SUCCESS,
        provider_id=provider_id,
        outputs=outputs,
        generation_time=result.seconds,
    )


def _queue_id(provider_id: str) -> int:
    number = provider_id.removeprefix(PROVIDER_PREFIX)
    if not provider_id.startswith(PROVIDER_PREFIX) or not number.isascii() or not number.isdigit():
        raise UnknownProviderJob(f"{provider_id!r} is not a GPU queue job")
    return int(number)


@contextlib.asynccontextmanager
async def _unavailable(what: str) -> AsyncIterator[None]:
    """The database's own errors, as the one error a Backend raises when it cannot be reached
    (retried by the engine; a fallback generator takes over a submit)."""
    try:
        yield
    except BackendError:
        raise
    except Exception as exc:
        log.warning("%s: %s", what, type(exc).__name__)
        raise ProviderUnavailable(what) from None
