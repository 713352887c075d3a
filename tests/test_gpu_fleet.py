"""The GPU fleet end to end: real `headshot-bot gpu-worker` processes on the CPU with the tiny
models, on a real PostgreSQL, behind the bot's FleetBackend (tests/fleet.py).

What issue 15 asks to be shown: jobs reach only the workers that serve their operation; the
dispatcher's capacity follows the live workers; /admin workers shows the fleet to owners only; a
worker killed mid-job has its job made by another, paid once (and a second death fails and
refunds it once); a bot restarted mid-generation still delivers; SIGTERM lets the current job
finish.

Starting a worker costs half a minute of imports on a small machine, so the module has one
database and one fleet, and the tests run in order on it, each starting only the workers it
adds: the portrait and avatar workers (routing); a spare headshot worker, then the avatar worker
killed (capacity; /admin workers then lists it as gone); the portrait and spare workers, one
killed mid-job; the survivor and a new one, both killed, while a facegen-only worker starts
beside them; that one then makes a job while the bot restarts, and another while it is stopped
by SIGTERM. Each test checks the workers it expects.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("procrastinate")

from PIL import Image

from backends.modelslab.simulator import Simulator
from bot.app import HeadshotApp, Overrides
from bot.config import load_settings
from bot.generation import GenerationRequest
from bot.jobs.events import Completed, Failed, JobEvent
from storage.records import JobState
from tests.chat import TestChat
from tests.conftest import (
    EXAMPLE_SELFIE,
    FAST,
    TEST_KEY,
    register_database,
    shared_image_workers,
)
from tests.databases import PostgresDatabases, execute, query
from tests.fleet import (
    WORKER_TIMEOUT_SECONDS,
    Fleet,
    GpuWorkerProcess,
    bot_settings,
    fleet_database,
    wait_for,
)
from tests.test_commands import count_rows
from tests.tiny_models import sd15, sdxl

# The first test waits for the models and the first workers too.
pytestmark = pytest.mark.timeout(400)

SMALL = {"width": 64, "height": 96}
# Long enough to catch a job on its worker and kill it there, even on a busy machine.
FACE_DELAY = 2.0
# A job's own time limit is far above any run's here: only what is tested can fail a job.
TIMINGS = dataclasses.replace(FAST, job_timeout_seconds=600)
BotFactory = Callable[..., Awaitable[HeadshotApp]]


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models of every operation tested, built once: SD 1.5 for headshot and facegen,
    SDXL with InstantID for avatar."""
    root = tmp_path_factory.mktemp("fleet_models")
    sd15.build(root)
    sdxl.build(root)
    return root


@pytest.fixture(scope="module")
def fleet(
    postgres: PostgresDatabases, models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    """The module's database, with a worker role, and its fleet: the portrait worker (headshot
    and facegen) and the avatar worker, started; the tests add the others."""
    url = postgres.migrated()
    workdir = tmp_path_factory.mktemp("fleet")
    the_fleet = Fleet(asyncio.run(fleet_database(url)), workdir, models_dir, slow_faces=True)
    try:
        portraits = the_fleet.worker(["headshot", "facegen"], name="portraits")
        avatars = the_fleet.worker(["avatar"], name="avatars")
        asyncio.run(the_fleet.start(portraits, avatars))
        yield the_fleet
    finally:
        asyncio.run(the_fleet.stop())
        postgres.drop(url)


@pytest.fixture
def fleet_now(fleet: Fleet) -> Iterator[Fleet]:
    """The fleet for one test: no face delay, no takers seen yet, its ledger checked after; the
    workers' logs printed if the test fails."""
    register_database(fleet.database.owner_url)
    fleet.set_face_delay(0.0)
    fleet.forget_takers()
    yield fleet
    print(fleet.logs())  # pytest shows it for a failed test only


def member(fleet: Fleet, name: str) -> GpuWorkerProcess:
    return next(worker for worker in fleet.members if worker.name == name)


@pytest.fixture
async def start_bot(fleet_now: Fleet) -> AsyncIterator[BotFactory]:
    """Start a replica of the bot in this process on the fleet's database (BACKEND=local, which
    is the FleetBackend on PostgreSQL); every one started is stopped after."""
    async with AsyncExitStack() as stack:

        async def factory(**more: Any) -> HeadshotApp:
            settings = load_settings(**bot_settings(fleet_now, **more))
            overrides = Overrides(timings=TIMINGS, images=shared_image_workers())
            app = HeadshotApp(settings, overrides)
            await stack.enter_async_context(app)
            return app

        yield factory


async def request(app: HeadshotApp, operation: str = "headshot", seed: int = 1) -> str:
    job = await app.generation.request(
        GenerationRequest(
            platform="test",
            platform_user_id="alice",
            operation=operation,
            options={"prompt": "a studio portrait", "seed": seed, **SMALL},
            selfie=EXAMPLE_SELFIE.read_bytes(),
        )
    )
    return job.id


def follow(app: HeadshotApp, job_id: str) -> asyncio.Task[JobEvent]:
    """The job's outcome (Completed or Failed), watched from now on."""
    subscription = app.events.watch(job_id)

    async def final() -> JobEvent:
        async with asyncio.timeout(120):
            async for event in subscription:
                if isinstance(event, Completed | Failed):
                    return event
        raise AssertionError("the event stream ended without an outcome")

    return asyncio.create_task(final())


async def made_by(fleet: Fleet, job_id: str) -> list[str]:
    """The registry ids of the workers whose results were written for the job."""
    rows = query(
        fleet.database.owner_url, "SELECT worker_id FROM gpu_results WHERE job_id = :j", j=job_id
    )
    return [str(row[0]) for row in rows]


def makers(fleet: Fleet, job_id: str) -> list[str]:
    """The workers whose logs say they made the job's images."""
    return [worker.name for worker in fleet.members if f"job {job_id}: " in worker.logs(10**7)]


async def ledger(app: HeadshotApp, job_id: str) -> dict[str, int]:
    """The job's ledger rows by kind: a failed job's credit is released (given back), which is
    the refund of the issue's words; a `refund` row is a moderator's, of a succeeded job."""
    return {
        kind: await count_rows(app, "credit_ledger", f"job_id = '{job_id}' AND kind = '{kind}'")
        for kind in ("reserve", "commit", "release")
    }


async def image_sizes(app: HeadshotApp, job_id: str) -> list[tuple[int, int]]:
    sizes = []
    for output in await app.jobs.outputs(job_id):
        data = await app.store.get(output.content_key)
        sizes.append(Image.open(io.BytesIO(data)).size)
    return sizes


async def test_jobs_reach_only_the_workers_that_serve_their_operation(
    fleet_now: Fleet, start_bot: BotFactory
) -> None:
    portraits, avatars = member(fleet_now, "portraits"), member(fleet_now, "avatars")
    assert [w.name for w in fleet_now.members if w.running] == ["portraits", "avatars"]
    assert portraits.worker_id and avatars.worker_id
    app = await start_bot()

    jobs = {}
    for seed, operation in enumerate(("headshot", "avatar", "facegen", "avatar", "headshot")):
        job_id = await request(app, operation, seed=seed)
        jobs[job_id] = (operation, follow(app, job_id))
    for job_id, (operation, outcome) in jobs.items():
        event = await outcome
        assert isinstance(event, Completed), (operation, event)
        assert await image_sizes(app, job_id) == [(64, 96)]
        expected = avatars if operation == "avatar" else portraits
        assert await made_by(fleet_now, job_id) == [expected.worker_id], operation
        assert makers(fleet_now, job_id) == [expected.name], operation


async def test_capacity_is_the_live_workers_and_a_killed_one_drops_out_in_time(
    fleet_now: Fleet, start_bot: BotFactory
) -> None:
    # In the module's order: the portrait and avatar workers, and a spare one started here.
    three = await running_count(fleet_now, 3, ["headshot"], name="spare")
    app = await start_bot()
    assert await app.engine.dispatcher.current_capacity() == 3  # three workers, one slot each

    # In the module's order, the avatar worker: the headshot ones serve the tests after.
    victim = next((w for w in three if "headshot" not in w.operations), three[-1])
    await victim.kill()
    killed_at = time.monotonic()
    await wait_for(lambda: _capacity_is(app, 2), within=WORKER_TIMEOUT_SECONDS + 3)
    # Dead once silent for the timeout; its last heartbeat was at most one interval before the
    # kill, and the backend's view of the live workers is at most half a second old.
    assert time.monotonic() - killed_at <= WORKER_TIMEOUT_SECONDS + 1.0
    assert app.engine.dispatcher.capacity == 2


async def _capacity_is(app: HeadshotApp, slots: int) -> bool:
    return await app.engine.dispatcher.current_capacity() == slots


async def test_admin_workers_shows_the_fleet_to_owners_only(
    fleet_now: Fleet, start_bot: BotFactory
) -> None:
    # In the module's order: the portrait and spare workers live, the avatar one killed.
    if all(record.live for record in await fleet_now.workers()):
        doomed = [worker for worker in fleet_now.members if worker.running][-1]
        await doomed.kill()
        await wait_for(lambda: _dead(fleet_now, doomed), within=WORKER_TIMEOUT_SECONDS + 3)
    records = await fleet_now.workers()
    live = [record for record in records if record.live]
    operations = {", ".join(record.operations) for record in records}
    (host,) = {record.host for record in records}
    chat = TestChat(await start_bot(owner_ids="test:root"))

    shown = (await chat.send("/admin workers", user="root")).reply.text
    assert f"{len(live)} live of {len(records)}" in shown, shown
    assert shown.count(f"• {host} · cpu · ") == len(records), shown
    assert all(listed in shown for listed in operations), shown
    # The killed one is still listed, marked as gone silent.
    assert "not heard from for" in shown and "last heartbeat" in shown, shown

    for where in ({"user": "bob"}, {"user": "mod", "community": "guild-1", "moderator": True}):
        refused = (await chat.send("/admin workers", **where)).reply.text  # type: ignore[arg-type]
        assert "owner" in refused.lower(), refused
        assert "headshot" not in refused and "heartbeat" not in refused, refused


async def _dead(fleet: Fleet, worker: GpuWorkerProcess) -> bool:
    return worker.worker_id not in {record.id for record in await fleet.live()}


async def test_a_worker_killed_mid_job_has_its_job_made_by_the_other_paid_once(
    fleet_now: Fleet, start_bot: BotFactory
) -> None:
    # In the module's order: the portrait and spare workers.
    both = await serving(fleet_now, "headshot", 2)
    app = await start_bot()
    fleet_now.set_face_delay(FACE_DELAY)

    job_id = await request(app, seed=21)
    outcome = follow(app, job_id)
    taker = fleet_now.by_pid(await fleet_now.wait_for_taker())
    await taker.kill()
    event = await outcome

    assert isinstance(event, Completed), event
    survivor = next(worker for worker in both if worker is not taker)
    assert fleet_now.takers() == sorted([taker.pid, survivor.pid]), "the other worker made it"
    assert makers(fleet_now, job_id) == [survivor.name]
    assert await made_by(fleet_now, job_id) == [survivor.worker_id]
    assert await image_sizes(app, job_id) == [(64, 96)]
    assert await ledger(app, job_id) == {"reserve": 1, "commit": 1, "release": 0}


async def test_a_job_whose_second_worker_dies_too_fails_and_is_refunded_once(
    fleet_now: Fleet, start_bot: BotFactory
) -> None:
    # In the module's order: the survivor of the test before and a new one; the worker of the
    # last two tests starts beside them (facegen only: it takes no job here).
    kept = [w for w in fleet_now.members if w.running and w.operations == ("facegen",)]
    await serving(fleet_now, "headshot", 2, also=[] if kept else ["facegen"])
    app = await start_bot()
    fleet_now.set_face_delay(FACE_DELAY)

    job_id = await request(app, seed=22)
    outcome = follow(app, job_id)
    first = await fleet_now.wait_for_taker()
    await fleet_now.by_pid(first).kill()
    second = await fleet_now.wait_for_taker(besides=[first])
    await fleet_now.by_pid(second).kill()
    event = await outcome

    assert isinstance(event, Failed), event
    assert event.refunded
    assert await made_by(fleet_now, job_id) == []
    assert await ledger(app, job_id) == {"reserve": 1, "commit": 0, "release": 1}
    job = await app.jobs.get(job_id)
    assert job is not None and job.state == JobState.FAILED


async def test_a_bot_restarted_mid_generation_still_delivers_the_image(
    fleet_now: Fleet, start_bot: BotFactory
) -> None:
    (worker,) = await serving(fleet_now, "facegen", 1)
    app = await start_bot()
    fleet_now.set_face_delay(FACE_DELAY)

    job_id = await request(app, "facegen", seed=41)
    assert await fleet_now.wait_for_taker() == worker.pid
    await app.stop()
    # The worker finishes while no replica is there to hear of it.
    await wait_for(lambda: made_by(fleet_now, job_id), within=60)
    again = await start_bot()

    for _ in range(1200):
        job = await again.jobs.get(job_id)
        if job is not None and job.state in (JobState.SUCCEEDED, JobState.FAILED):
            break
        await asyncio.sleep(0.05)
    assert job is not None and job.state == JobState.SUCCEEDED, job
    assert makers(fleet_now, job_id) == [worker.name]
    assert await image_sizes(again, job_id) == [(64, 96)]
    assert await ledger(again, job_id) == {"reserve": 1, "commit": 1, "release": 0}


async def test_a_worker_whose_database_connections_drop_keeps_its_models_and_takes_jobs(
    fleet_now: Fleet, start_bot: BotFactory
) -> None:
    """A PostgreSQL restart or fail-over cuts every connection of the workers: each takes jobs
    again once the database answers, without loading its models again."""
    (worker,) = await serving(fleet_now, "facegen", 1)
    app = await start_bot()
    role = make_url(fleet_now.database.worker_url).username
    owner = fleet_now.database.owner_url
    # The database out of reach for the workers for a few heartbeats: their connections cut,
    # new ones refused, then let in again.
    execute(owner, f'ALTER ROLE "{role}" NOLOGIN')
    try:
        cut = query(
            owner,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :role",
            role=role,
        )
        assert cut and all(ok for (ok,) in cut)
        await asyncio.sleep(WORKER_TIMEOUT_SECONDS / 2)
    finally:
        execute(owner, f'ALTER ROLE "{role}" LOGIN')

    event = await follow(app, await request(app, "facegen", seed=51))

    assert isinstance(event, Completed), event
    assert worker.running
    assert worker.logs(10**7).count("loaded and warmed up") == 1


async def test_sigterm_lets_the_current_job_finish_then_the_worker_leaves(
    fleet_now: Fleet, start_bot: BotFactory
) -> None:
    (worker,) = await serving(fleet_now, "facegen", 1)
    app = await start_bot()
    slots = await app.engine.dispatcher.current_capacity()
    fleet_now.set_face_delay(FACE_DELAY)

    job_id = await request(app, "facegen", seed=31)
    outcome = follow(app, job_id)
    assert await fleet_now.wait_for_taker() == worker.pid
    exit_code = await worker.terminate()
    event = await outcome

    assert exit_code == 0, worker.logs()
    assert isinstance(event, Completed), event
    assert makers(fleet_now, job_id) == [worker.name]
    assert await ledger(app, job_id) == {"reserve": 1, "commit": 1, "release": 0}
    assert worker.worker_id is not None
    (left,) = [record for record in await fleet_now.workers() if record.id == worker.worker_id]
    assert left.draining and not left.live
    assert await wait_for(lambda: _capacity_is(app, slots - 1), within=2.0)


async def serving(
    fleet: Fleet, operation: str, count: int, *, also: Sequence[str] = ()
) -> list[GpuWorkerProcess]:
    """Exactly `count` running workers serving `operation` (extras stopped by SIGTERM, missing
    ones started, serving only it, together with a worker for each of `also`): them."""
    running = [w for w in fleet.members if w.running and operation in w.operations]
    for extra in running[count:]:
        await extra.terminate()
    new = [fleet.worker([operation]) for _ in range(count - len(running))]
    beside = [fleet.worker([name]) for name in also]
    if new or beside:
        await fleet.start(*new, *beside)
    return running[:count] + new


async def running_count(
    fleet: Fleet, count: int, operations: Sequence[str], name: str
) -> list[GpuWorkerProcess]:
    """Exactly `count` running workers, the missing ones started (serving `operations`)."""
    running = [w for w in fleet.members if w.running]
    for extra in running[count:]:
        await extra.terminate()
    missing = count - len(running)
    new = [fleet.worker(operations, name=f"{name}-{n}" if n else name) for n in range(missing)]
    if new:
        await fleet.start(*new)
    return running[:count] + new


async def test_sigterm_hands_a_staged_job_back_for_another_worker(
    fleet_now: Fleet, start_bot: BotFactory
) -> None:
    """A worker of capacity 2 runs one job and stages the next: SIGTERM finishes the first there
    and hands the staged one back to the queue, where another worker makes it, paid once."""
    for extra in [w for w in fleet_now.members if w.running and "facegen" in w.operations]:
        await extra.terminate()
    stager = fleet_now.worker(["facegen"], capacity=2, name="stager")
    await fleet_now.start(stager)
    app = await start_bot()
    fleet_now.set_face_delay(FACE_DELAY * 2)

    first = await request(app, "facegen", seed=61)
    first_done = follow(app, first)
    assert await fleet_now.wait_for_taker() == stager.pid
    second = await request(app, "facegen", seed=62)
    second_done = follow(app, second)

    async def both_taken() -> bool:
        rows = query(
            fleet_now.database.owner_url,
            "SELECT count(*) FROM procrastinate_jobs WHERE status = 'doing'",
        )
        return rows == [(2,)]

    await wait_for(both_taken, within=30)
    assert await stager.terminate() == 0, stager.logs()
    assert "handed back to the queue" in stager.logs(10**7)
    fleet_now.set_face_delay(0.0)
    after = fleet_now.worker(["facegen"], name="after-stager")
    await fleet_now.start(after)

    done = [await first_done, await second_done]
    assert all(isinstance(event, Completed) for event in done), done
    assert makers(fleet_now, first) == ["stager"]
    assert makers(fleet_now, second) == ["after-stager"]
    for job_id in (first, second):
        assert await ledger(app, job_id) == {"reserve": 1, "commit": 1, "release": 0}


async def test_an_operation_no_live_worker_serves_goes_to_modelslab_paid_once(
    fleet_now: Fleet, start_bot: BotFactory, simulator: Simulator
) -> None:
    """FALLBACK_BACKEND=modelslab beside the fleet: with no avatar worker live, an avatar job is
    made by ModelsLab (the simulator), paid once."""
    await serving(fleet_now, "avatar", 0)
    app = await start_bot(
        fallback_backend="modelslab",
        modelslab_base_url=simulator.base_url,
        modelslab_api_key=TEST_KEY,
    )

    job_id = await request(app, "avatar", seed=71)
    event = await follow(app, job_id)

    assert isinstance(event, Completed), event
    assert await made_by(fleet_now, job_id) == []
    job = await app.jobs.get(job_id)
    assert job is not None and (job.provider_id or "").startswith("modelslab:"), job
    assert await ledger(app, job_id) == {"reserve": 1, "commit": 1, "release": 0}
