"""The fleet's GPU worker (`headshot-bot gpu-worker`): one process per GPU, on any machine that
reaches the cluster's PostgreSQL and image store (outbound connections only).

It loads and warms up its pipelines, and only then registers in the worker registry and takes
jobs from the queues of its operations. Each job's selfie comes from the shared store and its
images go back there; the queue writes the result row. Its heartbeat row carries its figures.
On stop it says it is draining first (replicas stop counting it), hands its staged jobs back,
finishes the running job and leaves its row, draining, with its last figures.

The pipelines (numpy, torch) load only when the worker runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import logging
import socket
import statistics
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from PIL import Image

from backends.errors import InvalidRequest
from backends.local.config import WorkerConfig
from backends.local.probe import local_extra_installed
from bot.backends import check_local_models, worker_config
from bot.config import ConfigError, Settings
from bot.log_context import job_context
from bot.stores import open_store
from storage.database import Database
from storage.gpu_queue import (
    GenerationResult,
    HandBack,
    QueuedGeneration,
    QueueWorker,
    StoredImage,
)
from storage.gpu_workers import WorkerRegistry
from storage.imagestore import ImageNotFound, ImageStore

if TYPE_CHECKING:
    from backends.local.core import WorkerCore

log = logging.getLogger("headshot_bot.gpu_worker")

# The median seconds per image is over this many recent jobs.
RECENT_JOBS = 50
# Waits between tries at taking jobs again after the queue lost the database, up to this.
RETAKE_MAX_SECONDS = 30.0

NOT_POSTGRES = (
    "invalid setting DATABASE_URL: a GPU worker takes its jobs from the cluster's PostgreSQL "
    "(postgresql+psycopg://…)"
)
STORE_NOT_SHARED = (
    "invalid setting S3_BUCKET: a GPU worker writes its images where every replica reads them: "
    "set S3_BUCKET (the cluster's S3-compatible store), or IMAGE_STORE_SHARED=1 if "
    "$DATA_DIR/images is the replicas' own folder (a network folder)"
)


async def run_gpu_worker(
    settings: Settings, *, stop: asyncio.Event, on_ready: Callable[[], None] | None = None
) -> None:
    """Serve jobs until `stop` is set, then drain. `on_ready` is called once the pipelines are
    warm and the worker is registered. Raises ConfigError (one line) for a bad setting."""
    url = settings.effective_database_url
    if not url.startswith("postgresql"):
        raise ConfigError(NOT_POSTGRES)
    if not (settings.s3_bucket or settings.image_store_shared):
        raise ConfigError(STORE_NOT_SHARED)
    config = worker_config(settings)
    _check_models(config)

    from backends.local.core import WorkerCore, quiet_libraries

    quiet_libraries()
    core = WorkerCore(config)
    try:
        operations = await asyncio.to_thread(core.load)
    except Exception as exc:
        log.exception("the GPU worker could not load its models")
        raise ConfigError(
            f"the GPU worker could not load its models ({type(exc).__name__}): see the log above"
        ) from None
    names = tuple(str(operation) for operation in operations)
    async with contextlib.AsyncExitStack() as opened:
        store = open_store(settings)
        opened.push_async_callback(store.aclose)
        db = Database(url)
        opened.push_async_callback(db.dispose)
        registry = WorkerRegistry(db)
        try:
            worker_id = await registry.register(
                host=socket.gethostname(),
                device=settings.local_device,
                operations=names,
                capacity=settings.gpu_worker_capacity,
            )
        except Exception as exc:
            # Only the type: a driver's message may quote the connection's details.
            raise ConfigError(
                f"invalid setting DATABASE_URL: this GPU worker cannot register there "
                f"({type(exc).__name__}): is the database migrated by the bot, and the role "
                "made with `headshot-bot gpu-worker-role`?"
            ) from None
        draining = asyncio.Event()
        service = _Service(core, store, draining)
        heartbeat = _Heartbeat(registry, worker_id, service.figures, settings)
        queue = QueueWorker(
            url,
            worker_id=worker_id,
            heartbeat_seconds=settings.gpu_worker_heartbeat_seconds,
            worker_timeout=settings.gpu_worker_timeout_seconds,
        )
        try:
            await _serve(queue, heartbeat, service, names, settings, stop, draining, on_ready)
        finally:
            # Its row stays, draining, with its last figures: the replicas wait a while for a
            # worker of its operations to come back (a restart) before refusing their jobs, and
            # /admin workers shows it stopped until the replicas prune it.
            await heartbeat.beat()
            log.info("stopped taking jobs")


async def _serve(
    queue: QueueWorker,
    heartbeat: _Heartbeat,
    service: _Service,
    operations: Sequence[str],
    settings: Settings,
    stop: asyncio.Event,
    draining: asyncio.Event,
    on_ready: Callable[[], None] | None,
) -> None:
    # The queue worker stops on its own event, set only after the draining heartbeat is written:
    # no replica counts this worker's slots while it finishes its last job. Staged jobs go
    # back to the queue at that moment.
    beating = asyncio.create_task(heartbeat.run())
    work = asyncio.create_task(
        _keep_working(queue, operations, settings.gpu_worker_capacity, service, draining)
    )
    if on_ready is not None:
        on_ready()
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({work, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
        service.figures.draining = True
        await heartbeat.beat()
        draining.set()
        if not work.done():
            log.info("draining: finishing the running job")
        await work


async def _keep_working(
    queue: QueueWorker,
    operations: Sequence[str],
    capacity: int,
    service: _Service,
    draining: asyncio.Event,
) -> None:
    """Take jobs until draining. The queue's worker stops when it loses the database (a
    PostgreSQL restart or fail-over): it is started again, with the models still loaded."""
    wait = 1.0
    while not draining.is_set():
        try:
            await queue.work(operations, capacity, service.handle, draining)
        except Exception as exc:
            if draining.is_set():
                return
            log.warning(
                "the queue stopped taking jobs (%s): taking jobs again in %.0f s",
                type(exc).__name__,
                wait,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(draining.wait(), wait)
            wait = min(RETAKE_MAX_SECONDS, wait * 2)
        else:
            wait = 1.0


@dataclass
class _Figures:
    """What the heartbeat reports: counts since start and recent speed."""

    jobs_done: int = 0  # images made (a request refused for its content is not counted)
    jobs_failed: int = 0
    draining: bool = False
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT_JOBS))

    @property
    def seconds_per_image(self) -> float | None:
        return statistics.median(self.recent) if self.recent else None


class _Heartbeat:
    def __init__(
        self, registry: WorkerRegistry, worker_id: str, figures: _Figures, settings: Settings
    ) -> None:
        self._registry = registry
        self._worker_id = worker_id
        self._figures = figures
        self._every = settings.gpu_worker_heartbeat_seconds

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            await self.beat()

    async def beat(self) -> None:
        figures = self._figures
        try:
            await self._registry.heartbeat(
                self._worker_id,
                jobs_done=figures.jobs_done,
                jobs_failed=figures.jobs_failed,
                seconds_per_image=figures.seconds_per_image,
                draining=figures.draining,
            )
        except Exception as exc:
            # The next beat tries again; a worker silent for the timeout is dropped, as it must.
            log.warning("heartbeat failed (%s)", type(exc).__name__)


class _Service:
    """One job: the selfie from the store, the pipelines on the GPU, the images to the store."""

    def __init__(self, core: WorkerCore, store: ImageStore, draining: asyncio.Event) -> None:
        self.core = core
        self.store = store
        self.figures = _Figures()
        # One generation on the GPU at a time: with a capacity above 1 the other jobs are
        # staged (their inputs fetched) behind it, and handed back when the worker drains.
        self._gpu = asyncio.Lock()
        self._draining = draining

    async def handle(self, generation: QueuedGeneration) -> GenerationResult:
        with job_context(generation.track_id, operation=generation.operation):
            return await self._handle(generation)

    async def _handle(self, generation: QueuedGeneration) -> GenerationResult:
        try:
            result = await self._make(generation)
        except HandBack:
            raise
        except Exception as exc:  # the store out of reach, most likely
            log.exception("job %s failed", generation.track_id)
            result = GenerationResult(ok=False, reason=self.core.reason(exc))
        # A request refused for its content (no face) is neither: the GPU did what it should.
        if result.ok:
            self.figures.jobs_done += 1
        elif not result.refused:
            self.figures.jobs_failed += 1
        if result.ok and result.seconds is not None and result.images:
            self.figures.recent.append(result.seconds / len(result.images))
        return result

    async def _make(self, generation: QueuedGeneration) -> GenerationResult:
        track = generation.track_id
        try:
            face = await self.store.get(generation.face_key)
        except ImageNotFound:
            return GenerationResult(ok=False, reason="the selfie for this job is missing")
        pose = None
        if generation.pose_key is not None:
            try:
                pose = await self.store.get(generation.pose_key)
            except ImageNotFound:
                return GenerationResult(ok=False, reason="the pose image for this job is missing")
        await self._gpu_turn()
        try:
            try:
                started = time.monotonic()
                pngs = await asyncio.to_thread(self.core.run, generation.params, face, pose)
                seconds = time.monotonic() - started
            finally:
                self._gpu.release()
        except InvalidRequest as exc:
            return GenerationResult(ok=False, refused=True, reason=exc.message)
        except Exception as exc:
            log.exception("job %s failed", track)
            return GenerationResult(ok=False, reason=self.core.reason(exc))
        finally:
            del face, pose  # the selfie is kept only while its job runs
        images = [await self._stored(png) for png in pngs]
        log.info("job %s: %d image(s) in %.1f s", track, len(images), seconds)
        return GenerationResult(ok=True, images=tuple(images), seconds=seconds)

    async def _gpu_turn(self) -> None:
        """Wait for the GPU (the job ahead finishing). HandBack if the worker starts draining
        first: a staged job is not started, another worker takes it."""
        acquiring = asyncio.ensure_future(self._gpu.acquire())
        draining = asyncio.ensure_future(self._draining.wait())
        await asyncio.wait({acquiring, draining}, return_when=asyncio.FIRST_COMPLETED)
        draining.cancel()
        if not acquiring.done():
            acquiring.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await acquiring
        if acquiring.done() and not acquiring.cancelled():
            if not self._draining.is_set():
                return
            self._gpu.release()
        raise HandBack

    async def _stored(self, png: bytes) -> StoredImage:
        key = await self.store.put(png, content_type="image/png")
        with Image.open(io.BytesIO(png)) as image:  # reads the header only
            width, height = image.size
        return StoredImage(
            key=key, content_type="image/png", width=width, height=height, size_bytes=len(png)
        )


def _check_models(config: WorkerConfig) -> None:
    if not local_extra_installed():
        raise ConfigError(
            "a GPU worker needs torch and diffusers: pip install 'headshot-bot[local,postgres]'"
        )
    check_local_models(config)
    if config.face_analyser != "insightface":
        module = config.face_analyser.partition(":")[0]
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise ConfigError(f"invalid setting LOCAL_FACE_ANALYSER: no module named {module}")
