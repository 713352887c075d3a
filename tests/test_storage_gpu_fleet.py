"""The GPU fleet's storage on a real PostgreSQL: Procrastinate's queue worked by real workers
(one in a process of its own, killed with SIGKILL), the results table and its NOTIFY, the worker
registry by the database's clock, the workers' role refused everything else, and migration 0010.

Run as `python -m tests.test_storage_gpu_fleet URL CAPACITY`, this module is a worker whose
generations never end (the one the tests kill)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import secrets
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import func, select

from storage.database import Database
from storage.gpu_access import grant_worker_role, worker_url
from storage.gpu_queue import (
    RESULTS_CHANNEL,
    GenerationResult,
    GpuQueue,
    HandBack,
    QueuedGeneration,
    QueueState,
    QueueStatus,
    QueueWorker,
    StoredImage,
    psycopg_params,
)
from storage.gpu_workers import WorkerRegistry
from storage.migrate import downgrade, upgrade
from storage.models import utcnow
from tests.databases import execute, query, tables

ROOT = Path(__file__).resolve().parent.parent
HEARTBEAT = 0.3
TIMEOUT = 1.5
IMAGE = StoredImage(
    key="ab" * 32 + ".png", content_type="image/png", width=64, height=80, size_bytes=1234
)
MADE = GenerationResult(ok=True, images=(IMAGE,), seconds=0.25)


def generation(track: str, operation: str = "headshot") -> QueuedGeneration:
    return QueuedGeneration(
        track_id=track,
        params={"operation": operation, "prompt": "a portrait", "seed": 7},
        face_key="cd" * 32 + ".jpg",
        pose_key=None,
    )


class Generator:
    """A worker's `handle`: notes each generation it is given; holds it until released when
    `hold` is set."""

    def __init__(self, *, hold: bool = False, result: GenerationResult = MADE) -> None:
        self.hold = hold
        self.result = result
        self.taken: list[str] = []
        self.started: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.release: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    async def __call__(self, generation: QueuedGeneration) -> GenerationResult:
        self.taken.append(generation.track_id)
        self.started[generation.track_id].set()
        if self.hold:
            await self.release[generation.track_id].wait()
        return self.result

    def release_all(self) -> None:
        self.hold = False
        for event in list(self.release.values()):
            event.set()


@contextlib.asynccontextmanager
async def working(
    url: str,
    generator: Generator | FailingGenerator,
    *,
    capacity: int = 1,
    operations: tuple[str, ...] = ("headshot",),
) -> AsyncIterator[tuple[asyncio.Event, asyncio.Task[None]]]:
    """A QueueWorker working in this process until the block ends (then stopped, its held
    generations released)."""
    stop = asyncio.Event()
    worker = QueueWorker(
        url, worker_id=secrets.token_hex(16), heartbeat_seconds=HEARTBEAT, worker_timeout=TIMEOUT
    )
    task = asyncio.create_task(worker.work(operations, capacity, generator, stop))
    try:
        yield stop, task
    finally:
        stop.set()
        if isinstance(generator, Generator):
            generator.release_all()
        await asyncio.wait_for(task, 30)


class FailingGenerator:
    async def __call__(self, generation: QueuedGeneration) -> GenerationResult:
        raise RuntimeError(f"out of memory making {generation.track_id}")


@contextlib.asynccontextmanager
async def opened(queue: GpuQueue) -> AsyncIterator[GpuQueue]:
    await queue.open()
    try:
        yield queue
    finally:
        await queue.aclose()


async def eventually_result(queue: GpuQueue, queue_id: int) -> GenerationResult:
    for _ in range(300):
        result = await queue.result(queue_id)
        if result is not None:
            return result
        await asyncio.sleep(0.1)
    raise AssertionError(f"no result for queue job {queue_id}")


async def eventually_state(queue: GpuQueue, queue_id: int, state: QueueState) -> QueueStatus:
    for _ in range(300):
        status = await queue.status(queue_id)
        if status.state == state:
            return status
        await asyncio.sleep(0.1)
    raise AssertionError(f"queue job {queue_id} never {state}: {status}")


@pytest.fixture
def worker_role(postgres_url: str) -> Iterator[str]:
    """A role name of this test's own (roles belong to the whole server), dropped after."""
    role = f"gpu_worker_{secrets.token_hex(4)}"
    yield role
    with psycopg.connect(**psycopg_params(postgres_url), autocommit=True) as conn:  # type: ignore[arg-type]
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        if exists:
            conn.execute(f'DROP OWNED BY "{role}"')  # type: ignore[arg-type]
            conn.execute(f'DROP ROLE "{role}"')  # type: ignore[arg-type]


async def test_the_worker_role_works_the_queue_and_is_refused_everything_else(
    postgres_url: str, worker_role: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await grant_worker_role(postgres_url, worker_role, "first-password")
    await grant_worker_role(postgres_url, worker_role, "s3cr3t 'quoted\" password")
    url = worker_url(postgres_url, worker_role, "s3cr3t 'quoted\" password")
    params = psycopg_params(url)
    assert params["user"] == worker_role

    db = Database(url)
    listener = await psycopg.AsyncConnection.connect(**params, autocommit=True)  # type: ignore[arg-type]
    try:
        registry = WorkerRegistry(db)
        worker_id = await registry.register(
            host="gpu-box", device="cuda:0", operations=["headshot"], capacity=1
        )
        await registry.heartbeat(
            worker_id, jobs_done=0, jobs_failed=0, seconds_per_image=None, draining=False
        )
        assert [w.id for w in await registry.live(timeout=TIMEOUT)] == [worker_id]
        await listener.execute(f"LISTEN {RESULTS_CHANNEL}")  # type: ignore[arg-type]

        async with opened(GpuQueue(postgres_url, worker_timeout=TIMEOUT)) as queue:
            queue_id = await queue.send(generation("track-1"))
            assert await queue.status(queue_id) == QueueStatus(QueueState.WAITING, 0)
            generator = Generator()
            async with working(url, generator):
                notice = await asyncio.wait_for(anext(listener.notifies()), 30)
            assert (notice.channel, notice.payload) == (RESULTS_CHANNEL, "track-1")
            assert generator.taken == ["track-1"]
            assert await queue.result(queue_id) == MADE
            # Procrastinate deletes the ended job: only the results row tells of it.
            assert (await queue.status(queue_id)).state == QueueState.GONE
        assert query(postgres_url, "SELECT job_id, ok FROM gpu_results") == [("track-1", True)]
        # Procrastinate's own lines name each job's arguments: the prompt is in none.
        assert "a portrait" not in caplog.text
        await registry.unregister(worker_id)
        assert await registry.workers(timeout=TIMEOUT) == []

        refused = [
            "SELECT * FROM users",
            "SELECT * FROM jobs",
            "SELECT * FROM credit_ledger",
            "UPDATE jobs SET state = 'failed'",
            "INSERT INTO credit_ledger (user_id, kind, pool, amount, created_at) "
            "VALUES (1, 'grant', 'paid', 100, now())",
            "UPDATE gpu_results SET ok = false",
            "DELETE FROM gpu_results",
            "DELETE FROM alembic_version",
        ]
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                await listener.execute(statement)  # type: ignore[arg-type]
    finally:
        await listener.close()
        await db.dispose()


async def test_a_role_name_is_checked_and_never_the_owners() -> None:
    url = "postgresql+psycopg://owner:pw@db.example/headshot"
    for bad in ("", "a" * 64, 'gpu"; DROP TABLE jobs; --', "gpu-worker"):
        with pytest.raises(ValueError, match=r"^the GPU workers' role name must be"):
            await grant_worker_role(url, bad, "pw")
    with pytest.raises(ValueError, match="must not be the database owner's own role"):
        await grant_worker_role(url, "owner", "pw")


async def test_stalled_jobs_go_back_once_or_are_given_up(postgres_url: str) -> None:
    """A worker killed mid-job: its jobs are RUNNING while it heartbeats, STALLED after the
    timeout. One goes back to the queue (once) and another worker makes it; the other is given
    up and no worker takes it."""
    async with opened(GpuQueue(postgres_url, worker_timeout=TIMEOUT)) as queue:
        again = await queue.send(generation("again"))
        dropped = await queue.send(generation("dropped"))
        doomed = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.test_storage_gpu_fleet",
            postgres_url,
            "2",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert doomed.stdout is not None
            lines = [await asyncio.wait_for(doomed.stdout.readline(), 60) for _ in range(2)]
            assert sorted(lines) == [b"taken again\n", b"taken dropped\n"]
            # Well past the timeout, its heartbeats keep it running.
            await asyncio.sleep(TIMEOUT * 1.5)
            assert await queue.status(again) == QueueStatus(QueueState.RUNNING, 0)
            assert await queue.stalled_tracks() == []
            assert not await queue.requeue(again)
        finally:
            doomed.send_signal(signal.SIGKILL)
            await doomed.wait()

        assert await eventually_state(queue, again, QueueState.STALLED) == QueueStatus(
            QueueState.STALLED, 0
        )
        assert await queue.stalled_tracks() == ["again", "dropped"]

        generator = Generator(hold=True)
        async with working(postgres_url, generator):
            # The new worker prunes the dead one's heartbeat row: its jobs stay STALLED.
            await asyncio.sleep(1)
            assert (await queue.status(dropped)).state == QueueState.STALLED

            await queue.give_up(dropped)
            assert await queue.status(dropped) == QueueStatus(QueueState.GONE, 0)

            assert await queue.requeue(again)
            assert not await queue.requeue(again)
            await asyncio.wait_for(generator.started["again"].wait(), 30)
            assert await queue.status(again) == QueueStatus(QueueState.RUNNING, 1)
            assert await queue.stalled_tracks() == []
            generator.release["again"].set()
            assert await eventually_result(queue, again) == MADE
        assert generator.taken == ["again"]
        assert await queue.result(dropped) is None
        assert query(postgres_url, "SELECT count(*) FROM procrastinate_jobs") == [(0,)]


async def test_stop_finishes_the_running_job_and_takes_no_other(postgres_url: str) -> None:
    async with opened(GpuQueue(postgres_url, worker_timeout=TIMEOUT)) as queue:
        generator = Generator(hold=True)
        async with working(postgres_url, generator, capacity=2) as (stop, task):
            running = await queue.send(generation("running"))
            await asyncio.wait_for(generator.started["running"].wait(), 30)
            stop.set()
            await asyncio.sleep(0.2)
            late = await queue.send(generation("late"))
            # A free slot, and time enough for the worker to hear of the job and fetch it.
            await asyncio.sleep(1.5)
            assert generator.taken == ["running"]
            assert not task.done()
            generator.release["running"].set()
            await asyncio.wait_for(task, 30)
        assert await queue.result(running) == MADE
        assert await queue.status(late) == QueueStatus(QueueState.WAITING, 0)
        assert generator.taken == ["running"]


class HandingBack(Generator):
    """Hands back every generation whose track id starts with "staged"."""

    async def __call__(self, generation: QueuedGeneration) -> GenerationResult:
        if generation.track_id.startswith("staged"):
            self.taken.append(generation.track_id)
            raise HandBack
        return await super().__call__(generation)


async def test_a_handed_back_job_waits_again_uncounted_and_another_worker_makes_it(
    postgres_url: str,
) -> None:
    """A draining worker's staged job goes back to the queue as it was: WAITING, not counted as
    a requeue (so a later stall still gets its one requeue), no result written."""
    async with opened(GpuQueue(postgres_url, worker_timeout=TIMEOUT)) as queue:
        staged = await queue.send(generation("staged-1"))
        handing = HandingBack()
        async with working(postgres_url, handing):
            for _ in range(300):
                if handing.taken:
                    break
                await asyncio.sleep(0.1)
            assert handing.taken[:1] == ["staged-1"]
            await eventually_state(queue, staged, QueueState.WAITING)
        assert await queue.status(staged) == QueueStatus(QueueState.WAITING, 0)
        assert await queue.result(staged) is None
        generator = Generator()
        async with working(postgres_url, generator):
            assert await eventually_result(queue, staged) == MADE
        assert generator.taken == ["staged-1"]


async def test_jobs_go_only_to_workers_of_their_operation(postgres_url: str) -> None:
    async with opened(GpuQueue(postgres_url, worker_timeout=TIMEOUT)) as queue:
        avatar = await queue.send(generation("an-avatar", "avatar"))
        headshot = await queue.send(generation("a-headshot"))
        generator = Generator()
        async with working(postgres_url, generator, operations=("headshot", "facegen")):
            assert await eventually_result(queue, headshot) == MADE
            await asyncio.sleep(0.5)
        assert generator.taken == ["a-headshot"]
        assert await queue.status(avatar) == QueueStatus(QueueState.WAITING, 0)


async def test_a_job_sent_again_while_queued_or_running_is_the_same_queue_job(
    postgres_url: str,
) -> None:
    """A replica that died after sending a job and before recording its id sends it again when
    the job is taken over: the generation already queued (or running) is that one, not a second
    run; once it has ended, a new one is sent."""
    async with opened(GpuQueue(postgres_url, worker_timeout=TIMEOUT)) as queue:
        first = await queue.send(generation("twice"))
        assert await queue.send(generation("twice")) == first
        generator = Generator(hold=True)
        async with working(postgres_url, generator):
            await asyncio.wait_for(generator.started["twice"].wait(), 30)
            assert await queue.send(generation("twice")) == first
            generator.release["twice"].set()
            assert await eventually_result(queue, first) == MADE
        assert generator.taken == ["twice"]
        assert await queue.send(generation("twice")) != first


async def test_a_failure_is_a_failed_result_and_a_late_duplicate_changes_nothing(
    postgres_url: str,
) -> None:
    async with opened(GpuQueue(postgres_url, worker_timeout=TIMEOUT)) as queue:
        failing = await queue.send(generation("failing"))
        duplicate = await queue.send(generation("duplicate"))
        # A worker thought dead wrote this one first.
        execute(
            postgres_url,
            "INSERT INTO gpu_results (queue_id, job_id, ok, refused, images, finished_at) "
            "VALUES (:id, 'duplicate', true, false, '[]', now())",
            id=duplicate,
        )
        async with working(postgres_url, FailingGenerator()):
            assert await eventually_result(queue, failing) == GenerationResult(
                ok=False, reason="the GPU worker failed (RuntimeError)"
            )
            await eventually_state(queue, duplicate, QueueState.GONE)
        assert await queue.result(duplicate) == GenerationResult(ok=True)
        assert await queue.forget_results(timedelta(hours=1)) == 0
        execute(postgres_url, "UPDATE gpu_results SET finished_at = now() - interval '2 hours'")
        assert await queue.forget_results(timedelta(hours=1)) == 2
        assert await queue.result(failing) is None


async def test_the_registry_judges_workers_by_the_database_clock(db: Database) -> None:
    registry = WorkerRegistry(db)
    first = await registry.register(
        host="box-1", device="cuda:0", operations=["headshot", "facegen"], capacity=2
    )
    second = await registry.register(
        host="box-2", device="cuda:1", operations=["avatar"], capacity=1
    )
    workers = await registry.workers(timeout=TIMEOUT)
    assert [w.id for w in workers] == [second, first]
    assert workers[1].operations == ("headshot", "facegen")
    assert (workers[1].capacity, workers[1].host, workers[1].device) == (2, "box-1", "cuda:0")
    assert all(w.live and w.heartbeat_age < TIMEOUT for w in workers)

    await registry.heartbeat(
        first, jobs_done=5, jobs_failed=1, seconds_per_image=2.5, draining=False
    )
    await registry.heartbeat(
        second, jobs_done=0, jobs_failed=0, seconds_per_image=None, draining=True
    )
    assert [w.id for w in await registry.live(timeout=TIMEOUT)] == [first]
    record = next(w for w in await registry.workers(timeout=TIMEOUT) if w.id == first)
    assert (record.jobs_done, record.jobs_failed, record.seconds_per_image) == (5, 1, 2.5)

    # Silent for ten seconds by the database's clock.
    async with db.read() as conn:
        now = await conn.scalar(select(func.now())) if not db.is_sqlite else utcnow()
    execute(
        db.url,
        "UPDATE gpu_workers SET heartbeat_at = :at WHERE id = :id",
        at=now - timedelta(seconds=10),
        id=first,
    )
    assert await registry.live(timeout=5) == []
    assert [w.id for w in await registry.live(timeout=20)] == [first]
    record = next(w for w in await registry.workers(timeout=5) if w.id == first)
    assert 9 < record.heartbeat_age < 13 and not record.live

    assert await registry.prune(older_than=5) == 1
    assert [w.id for w in await registry.workers(timeout=TIMEOUT)] == [second]
    # A live worker whose row was pruned (its database out of reach a while) comes back.
    await registry.heartbeat(
        first, jobs_done=6, jobs_failed=1, seconds_per_image=2.0, draining=False
    )
    assert {w.id for w in await registry.live(timeout=TIMEOUT)} == {first}
    await registry.unregister(second)
    await registry.unregister(first)
    assert await registry.workers(timeout=TIMEOUT) == []


PROCRASTINATE_OBJECTS = (
    "SELECT (SELECT count(*) FROM pg_proc WHERE proname LIKE 'procrastinate%'), "
    "(SELECT count(*) FROM pg_type WHERE typname LIKE 'procrastinate%')"
)


async def test_0010_adds_and_removes_the_fleet(empty_database_url: str) -> None:
    url = empty_database_url
    postgres = url.startswith("postgresql")
    await upgrade(url, "0009")
    before = tables(url)
    await upgrade(url, "0010")
    queue = {"procrastinate_jobs", "procrastinate_workers", "procrastinate_events"}
    added = tables(url) - before
    assert added >= {"gpu_workers", "gpu_results"}
    assert (added >= queue) == postgres
    if postgres:
        functions, types = query(url, PROCRASTINATE_OBJECTS)[0]
        assert functions > 10 and types >= 3
    await downgrade(url, "0009")
    assert tables(url) == before
    if postgres:
        assert query(url, PROCRASTINATE_OBJECTS) == [(0, 0)]
    await upgrade(url, "0010")
    assert tables(url) - before == added


def test_0010_takes_only_the_procrastinate_it_was_written_for() -> None:
    path = ROOT / "migrations" / "versions" / "0010_gpu_fleet.py"
    spec = importlib.util.spec_from_file_location("revision_0010", path)
    assert spec is not None and spec.loader is not None
    revision = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(revision)
    revision.check_procrastinate_version("3.10.0")
    revision.check_procrastinate_version("3.10.7")
    with pytest.raises(RuntimeError, match=r"3\.11\.0 is installed: its schema changes need a new"):
        revision.check_procrastinate_version("3.11.0")
    assert "CREATE TABLE procrastinate_jobs" in revision.procrastinate_schema()


async def _worker_that_hangs(url: str, capacity: int) -> None:
    """The worker the stall test kills: says which jobs it took, and never ends them."""

    async def hang(generation: QueuedGeneration) -> GenerationResult:
        print(f"taken {generation.track_id}", flush=True)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    worker = QueueWorker(
        url, worker_id="doomed", heartbeat_seconds=HEARTBEAT, worker_timeout=TIMEOUT
    )
    await worker.work(["headshot"], capacity, hang, asyncio.Event())


if __name__ == "__main__":
    asyncio.run(_worker_that_hangs(sys.argv[1], int(sys.argv[2])))
