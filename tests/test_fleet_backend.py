"""The fleet's backend (bot/fleet/backend.py) on a real PostgreSQL, with a real queue and real
Procrastinate workers whose work is done by the test: no GPU, no models. A job is submitted,
followed, woken by its result's NOTIFY and answered with links to images already in the store;
a worker killed mid-job costs the job one more try, then the job; the dispatcher's pools are the
live workers'."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from backends.base import ResultStatus, StoredOutput, SubmitRequest
from backends.errors import (
    InvalidRequest,
    OperationNotServed,
    OutputUnavailable,
    UnknownProviderJob,
)
from backends.fallback import FallbackBackend
from backends.modelslab import ModelsLabClient
from backends.params import GenerationParams, Operation
from bot.config import load_settings
from bot.fleet.backend import NO_WORKER_ANY_MORE, STOPPED_TWICE, FleetBackend
from bot.fleet.pools import EVERY_OPERATION, pools_of
from bot.jobs.rehost import Rehoster
from storage.coordination import Coordination, open_coordination
from storage.database import Database
from storage.dispatch import Pool
from storage.gpu_queue import (
    GenerationResult,
    GpuQueue,
    QueuedGeneration,
    QueueState,
    QueueWorker,
    StoredImage,
)
from storage.gpu_workers import WorkerRegistry
from storage.imagestore import DiskImageStore
from tests.conftest import TEST_KEY, make_image
from tests.databases import execute

HEARTBEAT = 0.2
TIMEOUT = 2.0  # a worker silent this long is dead: well past a busy machine's pauses
ROOT = Path(__file__).resolve().parents[1]
URL_ENV = "FLEET_TEST_DATABASE_URL"

Handle = Callable[[QueuedGeneration], Awaitable[GenerationResult]]


@dataclass
class Fleet:
    url: str
    db: Database
    registry: WorkerRegistry
    coordination: Coordination
    backend: FleetBackend
    store: DiskImageStore
    woken: list[str] = field(default_factory=list)
    wake: asyncio.Event = field(default_factory=asyncio.Event)

    def heard(self, track_id: str) -> None:
        self.woken.append(track_id)
        self.wake.set()

    async def woken_for(self, track_id: str, within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while track_id not in self.woken:
                self.wake.clear()
                await self.wake.wait()

    async def register(self, operations: tuple[str, ...], capacity: int = 1) -> str:
        return await self.registry.register(
            host="gpu-box", device="cpu", operations=operations, capacity=capacity
        )

    async def beat(self, worker_id: str, *, draining: bool = False) -> None:
        await self.registry.heartbeat(
            worker_id, jobs_done=0, jobs_failed=0, seconds_per_image=None, draining=draining
        )


@pytest.fixture
async def fleet(postgres_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    db = Database(postgres_url)
    coordination = open_coordination(postgres_url)
    registry = WorkerRegistry(db)
    backend = FleetBackend(
        GpuQueue(postgres_url, worker_timeout=TIMEOUT),
        registry,
        worker_timeout=TIMEOUT,
        listen=coordination.listen,
    )
    fleet = Fleet(
        postgres_url, db, registry, coordination, backend, DiskImageStore(tmp_path / "images")
    )
    backend.listen(fleet.heard)
    await backend.start()
    try:
        yield fleet
    finally:
        await backend.aclose()
        await coordination.aclose()
        await db.dispose()


@contextlib.asynccontextmanager
async def queue_worker(fleet: Fleet, worker_id: str, handle: Handle) -> AsyncIterator[None]:
    """A Procrastinate worker of the queue in this process, taking headshots."""
    stop = asyncio.Event()
    worker = QueueWorker(
        fleet.url, worker_id=worker_id, heartbeat_seconds=HEARTBEAT, worker_timeout=TIMEOUT
    )
    task = asyncio.create_task(worker.work(["headshot"], 1, handle, stop))
    try:
        yield
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


def request(track_id: str, operation: Operation = Operation.HEADSHOT) -> SubmitRequest:
    return SubmitRequest(
        params=GenerationParams.create(operation, prompt="a portrait"),
        face_image=b"",
        track_id=track_id,
        face_key="inputs/selfie.jpg",
    )


async def stored(store: DiskImageStore, size: tuple[int, int]) -> StoredImage:
    data = make_image(size)
    key = await store.put(data, content_type="image/png")
    return StoredImage(key, "image/png", size[0], size[1], len(data))


async def processing(fleet: Fleet, provider_id: str) -> None:
    result = await fleet.backend.fetch(Operation.HEADSHOT, provider_id)
    assert (result.status, result.provider_id) == (ResultStatus.PROCESSING, provider_id)


# ---- one job through ---------------------------------------------------------------------------


async def test_a_job_goes_through_a_worker_and_comes_back_as_stored_images(fleet: Fleet) -> None:
    release = asyncio.Event()
    taken: list[QueuedGeneration] = []

    async def handle(generation: QueuedGeneration) -> GenerationResult:
        taken.append(generation)
        await release.wait()
        images = (await stored(fleet.store, (64, 48)), await stored(fleet.store, (32, 32)))
        return GenerationResult(ok=True, images=images, seconds=1.5)

    worker_id = await fleet.register(("headshot", "facegen"))
    async with queue_worker(fleet, worker_id, handle):
        submitted = await fleet.backend.submit(request("job-1"))
        assert submitted.status == ResultStatus.PROCESSING
        assert submitted.provider_id is not None and submitted.provider_id.startswith("gpu-")
        provider_id = submitted.provider_id
        async with asyncio.timeout(10):
            while not taken:
                await asyncio.sleep(0.05)
        await processing(fleet, provider_id)
        # What the worker was sent: where the selfie is, and the seed fixed.
        (generation,) = taken
        assert (generation.track_id, generation.face_key, generation.pose_key) == (
            "job-1",
            "inputs/selfie.jpg",
            None,
        )
        assert generation.params["seed"] == submitted.seed is not None

        release.set()
        await fleet.woken_for("job-1")  # the result's NOTIFY, not a poll

    result = await fleet.backend.fetch(Operation.HEADSHOT, provider_id)
    assert (result.status, result.generation_time) == (ResultStatus.SUCCESS, 1.5)
    outputs = [StoredOutput.parse(url) for url in result.outputs]
    assert [(o.width, o.height) for o in outputs if o] == [(64, 48), (32, 32)]
    assert all(fleet.backend.owns_output(url) for url in result.outputs)
    with pytest.raises(OutputUnavailable):
        await fleet.backend.download_output(result.outputs[0], max_bytes=10**6)

    # Re-hosting them is recording them: nothing is downloaded.
    rehoster = Rehoster(fleet.backend, fleet.store, max_bytes=10**6)
    deadline = time.monotonic() + 30
    records = await rehoster.rehost("job-1", result.outputs, deadline=deadline)
    assert [r.content_key for r in records] == [o.key for o in outputs if o]


async def test_a_refused_request_is_an_invalid_request(fleet: Fleet) -> None:
    async def handle(generation: QueuedGeneration) -> GenerationResult:
        return GenerationResult(ok=False, refused=True, reason="no face was found in the selfie")

    async with queue_worker(fleet, await fleet.register(("headshot",)), handle):
        provider_id = (await fleet.backend.submit(request("job-2"))).provider_id
        assert provider_id is not None
        await fleet.woken_for("job-2")
    with pytest.raises(InvalidRequest, match="no face was found in the selfie"):
        await fleet.backend.fetch(Operation.HEADSHOT, provider_id)


async def test_a_failed_generation_is_a_failed_result(fleet: Fleet) -> None:
    async def handle(generation: QueuedGeneration) -> GenerationResult:
        raise RuntimeError("out of GPU memory")

    async with queue_worker(fleet, await fleet.register(("headshot",)), handle):
        provider_id = (await fleet.backend.submit(request("job-3"))).provider_id
        assert provider_id is not None
        await fleet.woken_for("job-3")
    result = await fleet.backend.fetch(Operation.HEADSHOT, provider_id)
    assert (result.status, result.message) == (
        ResultStatus.FAILED,
        "the GPU worker failed (RuntimeError)",
    )


async def test_an_operation_no_live_worker_serves_is_not_served(fleet: Fleet) -> None:
    with pytest.raises(OperationNotServed, match="no GPU worker serves headshot right now"):
        await fleet.backend.submit(request("job-4"))
    avatars = await fleet.register(("avatar",))
    draining = await fleet.register(("headshot",))
    await fleet.beat(draining, draining=True)
    await asyncio.sleep(0.6)  # past the live workers' cache
    with pytest.raises(OperationNotServed, match="no GPU worker serves headshot"):
        await fleet.backend.submit(request("job-4"))
    assert (await fleet.backend.submit(request("job-5", Operation.AVATAR))).provider_id
    assert avatars
    # What no local pipeline makes is not served either, before it reaches a worker.
    odd = dataclasses.replace(
        request("job-6", Operation.AVATAR),
        params=GenerationParams.create(Operation.AVATAR, prompt="a portrait", width=500),
    )
    with pytest.raises(OperationNotServed, match="multiples of 8"):
        await fleet.backend.submit(odd)


async def test_an_unknown_job_is_unknown(fleet: Fleet) -> None:
    for provider_id in ("gpu-999999", "local-1", "gpu-x"):
        with pytest.raises(UnknownProviderJob):
            await fleet.backend.fetch(Operation.HEADSHOT, provider_id)


# ---- a worker killed mid-job ---------------------------------------------------------------------

WORKER_SCRIPT = """
import asyncio, os, sys
from storage.gpu_queue import QueueWorker

async def main():
    async def handle(generation):
        print(generation.track_id, flush=True)  # taken
        await asyncio.Event().wait()  # until killed

    worker = QueueWorker(
        os.environ["FLEET_TEST_DATABASE_URL"], worker_id="doomed",
        heartbeat_seconds=float(os.environ["HEARTBEAT"]),
        worker_timeout=float(os.environ["TIMEOUT"]),
    )
    await worker.work(["headshot"], 1, handle, asyncio.Event())

asyncio.run(main())
"""


async def take_and_kill(fleet: Fleet) -> str:
    """A worker in a process of its own takes the waiting job, and is killed (SIGKILL) on it.
    The track id of the job it took."""
    env = {**os.environ, URL_ENV: fleet.url, "HEARTBEAT": str(HEARTBEAT), "TIMEOUT": str(TIMEOUT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", WORKER_SCRIPT, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(60):
            taken = await process.stdout.readline()
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert taken, "the worker process stopped by itself"
    return taken.decode().strip()


async def stalled(fleet: Fleet, queue_id: int) -> None:
    """Wait for the job's worker to have been silent for the timeout. (A wake-up can come
    sooner: on a busy machine a worker's heartbeat can be late before it is killed, and then
    come once more.)"""
    async with asyncio.timeout(10):
        while (await fleet.backend.queue.status(queue_id)).state != QueueState.STALLED:
            await asyncio.sleep(0.1)


async def test_a_job_whose_worker_is_killed_is_requeued_once_then_given_up(
    fleet: Fleet,
) -> None:
    await fleet.register(("headshot",))  # the registry's row: the job may be submitted
    provider_id = (await fleet.backend.submit(request("job-6"))).provider_id
    assert provider_id is not None
    queue_id = int(provider_id.removeprefix("gpu-"))

    assert await take_and_kill(fleet) == "job-6"
    fleet.woken.clear()
    await fleet.woken_for("job-6")  # the watcher: its worker went silent
    await stalled(fleet, queue_id)
    await processing(fleet, provider_id)  # handed back to the queue, once
    status = await fleet.backend.queue.status(queue_id)
    assert (status.state, status.requeued) == (QueueState.WAITING, 1)

    assert await take_and_kill(fleet) == "job-6"  # another worker takes it
    fleet.woken.clear()
    await fleet.woken_for("job-6")
    await stalled(fleet, queue_id)
    result = await fleet.backend.fetch(Operation.HEADSHOT, provider_id)
    assert (result.status, result.message) == (ResultStatus.FAILED, STOPPED_TWICE)
    assert (await fleet.backend.queue.status(queue_id)).state == QueueState.GONE


# ---- capacity ----------------------------------------------------------------------------------


async def test_the_pools_are_the_live_workers_grouped_by_their_operations(fleet: Fleet) -> None:
    settings = load_settings()
    # No worker: every operation's jobs go through one at a time, to be refused at once.
    assert await pools_of(fleet.backend, settings) == [Pool(EVERY_OPERATION, 1, to_refuse=True)]

    faces = frozenset({"headshot", "facegen"})
    first = await fleet.register(("headshot", "facegen"), capacity=1)
    second = await fleet.register(("facegen", "headshot"), capacity=2)
    avatars = await fleet.register(("avatar",), capacity=1)
    await asyncio.sleep(0.6)  # past the live workers' cache, within the timeout
    unserved = Pool(EVERY_OPERATION - faces - {"avatar"}, 1, to_refuse=True)
    assert await pools_of(fleet.backend, settings) == [
        Pool(frozenset({"avatar"}), 1),
        Pool(faces, 3),
        unserved,
    ]

    # ModelsLab behind them takes the operations no worker serves, with its own slots.
    for worker_id in (first, second, avatars):
        await fleet.beat(worker_id)
    await asyncio.sleep(0.6)
    modelslab = ModelsLabClient(TEST_KEY, "http://127.0.0.1:9", timeout=1.0)
    both = FallbackBackend(fleet.backend, modelslab)
    assert await pools_of(both, settings) == [
        Pool(frozenset({"avatar"}), 1),
        Pool(faces, 3),
        Pool(EVERY_OPERATION - faces - {"avatar"}, settings.modelslab_max_queued),
    ]

    # A draining worker drops out at once; a silent one after the timeout.
    await fleet.beat(second, draining=True)
    for worker_id in (first, avatars):
        await fleet.beat(worker_id)
    await asyncio.sleep(0.6)
    assert await pools_of(fleet.backend, settings) == [
        Pool(frozenset({"avatar"}), 1),
        Pool(faces, 1),
        unserved,
    ]
    for _ in range(int(TIMEOUT / 0.2) + 3):  # the avatar worker goes silent meanwhile
        await fleet.beat(first)
        await asyncio.sleep(0.2)
    # Silent, the avatar worker is expected back a while: its jobs wait (no pool), unrefused.
    assert await pools_of(fleet.backend, settings) == [Pool(faces, 1), unserved]
    assert "avatar" in await fleet.backend.expected_operations()
    # Silent for good (ten timeouts), it is no longer waited for: its jobs are refused.
    execute(
        fleet.url,
        "UPDATE gpu_workers SET heartbeat_at = now() - interval '1 hour' WHERE id = :id",
        id=avatars,
    )
    await asyncio.sleep(0.6)
    assert await pools_of(fleet.backend, settings) == [
        Pool(faces, 1),
        Pool(EVERY_OPERATION - faces, 1, to_refuse=True),
    ]


async def test_a_waiting_job_no_worker_will_take_leaves_the_queue_and_fails(fleet: Fleet) -> None:
    """Its only worker gone for good while the job waited in the queue: the job is withdrawn
    and fails (refunded, or handed to a fallback) instead of waiting for the job timeout."""
    worker = await fleet.register(("headshot",))
    await asyncio.sleep(0.6)
    submitted = await fleet.backend.submit(request("job-w"))
    assert submitted.provider_id
    assert (await fleet.backend.fetch(Operation.HEADSHOT, submitted.provider_id)).status == (
        ResultStatus.PROCESSING
    )
    execute(
        fleet.url,
        "UPDATE gpu_workers SET heartbeat_at = now() - interval '1 hour' WHERE id = :id",
        id=worker,
    )
    await asyncio.sleep(0.6)
    failed = await fleet.backend.fetch(Operation.HEADSHOT, submitted.provider_id)
    assert (failed.status, failed.message) == (ResultStatus.FAILED, NO_WORKER_ANY_MORE)
    queue_id = int(submitted.provider_id.removeprefix("gpu-"))
    assert (await fleet.backend.queue.status(queue_id)).state == QueueState.GONE
