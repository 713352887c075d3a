"""What processes sharing one database agree on: one service per SQLite file; on PostgreSQL,
any number of replicas, with once-only work under advisory locks that die with their holder."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from backends.modelslab.simulator import Simulator
from bot.app import HeadshotApp
from bot.config import ConfigError, load_settings
from bot.jobs.engine import EngineTimings
from bot.jobs.events import Completed, JobEvent
from storage.coordination import (
    LISTENER_NAME,
    FileCoordination,
    PostgresCoordination,
    ServiceAlreadyRunning,
    open_coordination,
    taking_turns,
)
from storage.records import JobState
from tests.conftest import AppFactory
from tests.databases import execute, stored_bytes
from tests.test_engine import start_processing_job


async def test_one_service_per_sqlite_file_and_any_number_on_postgresql(
    make_app: AppFactory, database_kind: str
) -> None:
    await make_app()
    if database_kind == "sqlite":
        with pytest.raises(ConfigError) as refused:
            await make_app()
        assert str(refused.value).startswith("invalid setting DATABASE_URL: another headshot-bot")
        assert f"(pid {os.getpid()})" in str(refused.value)
        assert "one service per SQLite file (use PostgreSQL for several replicas)" in str(
            refused.value
        )
    else:
        second = await make_app()
        assert second.service
    # The command line's generate is no service: it may run beside one, on either database.
    assert not (await make_app(service=False)).service


async def test_the_sqlite_lock_dies_with_its_process(tmp_path: Path) -> None:
    """A service killed with SIGKILL leaves no lock behind: the next one starts."""
    database = tmp_path / "headshot.db"
    holder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import asyncio, sys; from storage.coordination import FileCoordination as F; "
        f"c = F(__import__('pathlib').Path({str(database)!r})); "
        "asyncio.run(c.claim_service()); print('held', flush=True); sys.stdin.read()",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert holder.stdout is not None
    assert await asyncio.wait_for(holder.stdout.readline(), 30) == b"held\n"
    mine = FileCoordination(database)
    with pytest.raises(ServiceAlreadyRunning, match=f"pid {holder.pid}"):
        await mine.claim_service()
    holder.send_signal(signal.SIGKILL)
    await holder.wait()
    await mine.claim_service()
    await mine.aclose()


async def test_advisory_locks_go_to_one_replica_and_move_when_it_goes(
    postgres_url: str,
) -> None:
    first, second = PostgresCoordination(postgres_url), PostgresCoordination(postgres_url)
    try:
        assert await first.try_lock("input-sweep")
        assert await first.try_lock("input-sweep")  # held: still ours
        assert not await second.try_lock("input-sweep")
        assert await second.try_lock("telegram-setup")  # another name, another lock
        await first.unlock("input-sweep")
        assert await second.try_lock("input-sweep")
        assert not await first.try_lock("input-sweep")
        await second.aclose()  # a replica that stops (or dies) lets its locks go
        # The server frees a closed session's locks when its backend ends, a moment after the
        # client has closed: the close does not wait for that.
        async with asyncio.timeout(5):
            while not await first.try_lock("input-sweep"):
                await asyncio.sleep(0.05)
        assert await first.try_lock("telegram-setup")
    finally:
        await first.aclose()
        await second.aclose()


def test_the_database_chooses_the_coordination(tmp_path: Path) -> None:
    assert isinstance(
        open_coordination(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}"), FileCoordination
    )
    assert isinstance(
        open_coordination("postgresql+psycopg://u@127.0.0.1:1/db"), PostgresCoordination
    )


KEY_A, KEY_B = "a1" * 32, "b2" * 32


async def test_every_process_on_a_database_has_the_same_pseudonym_key(
    make_app: AppFactory, tmp_path: Path, database_url: str
) -> None:
    """A replica with another key would let bans silently stop matching: it refuses to start,
    saying why. The database keeps only a check value, never the key."""
    first = await make_app(pseudonym_key=KEY_A)
    key_file = tmp_path / "secret"
    key_file.write_text(KEY_A + "\n")
    beside = await make_app(service=False, pseudonym_key_file=key_file)
    assert beside.pseudonyms.subject("test", "1") == first.pseudonyms.subject("test", "1")
    with pytest.raises(ConfigError) as refused:
        await make_app(service=False, pseudonym_key=KEY_B)
    message = str(refused.value)
    assert message.startswith("invalid setting PSEUDONYM_KEY: it is not the key this database")
    assert KEY_B not in message and KEY_A not in message
    # The data folder's own key file is another key: refused the same way.
    with pytest.raises(ConfigError, match="PSEUDONYM_KEY"):
        await make_app(service=False)
    stored = stored_bytes(database_url)
    assert KEY_A.encode() not in stored and bytes.fromhex(KEY_A) not in stored


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"pseudonym_key": "not hex"}, "invalid setting PSEUDONYM_KEY: must be at least 64"),
        ({"pseudonym_key": "ab" * 16}, "invalid setting PSEUDONYM_KEY: must be at least 64"),
    ],
)
def test_a_bad_pseudonym_key_is_refused_without_quoting_it(
    settings: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_settings(**settings)
    assert str(refused.value).startswith(message)
    assert settings["pseudonym_key"] not in str(refused.value)


async def test_a_missing_key_file_names_the_setting(make_app: AppFactory, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="invalid setting PSEUDONYM_KEY_FILE: cannot read"):
        await make_app(pseudonym_key_file=tmp_path / "nowhere")


async def test_on_postgresql_a_disk_store_must_be_declared_shared(
    make_app: AppFactory, database_kind: str
) -> None:
    """Any replica may serve an image or re-host an output: a folder on one machine is refused
    unless the operator says every replica sees it (or S3 holds the images)."""
    if database_kind == "sqlite":
        assert (await make_app(image_store_shared=False)).service
        return
    with pytest.raises(ConfigError) as refused:
        await make_app(image_store_shared=False)
    assert str(refused.value).startswith(
        "invalid setting S3_BUCKET: with PostgreSQL every replica must see the same images"
    )
    assert "IMAGE_STORE_SHARED=1" in str(refused.value)
    # The command line's generate keeps its images to itself: no replica needs them.
    assert not (await make_app(image_store_shared=False, service=False)).service
    assert (await make_app(image_store_shared=True)).service


async def test_work_done_in_turns_never_overlaps(postgres_url: str) -> None:
    """Replicas registering a chat platform's commands at start take turns: none skips its
    turn, and no two overlap."""
    replicas = [PostgresCoordination(postgres_url) for _ in range(3)]
    inside: list[int] = []
    overlaps = 0

    async def setup(n: int) -> None:
        nonlocal overlaps
        async with taking_turns(replicas[n], "telegram-setup"):
            overlaps += bool(inside)
            inside.append(n)
            await asyncio.sleep(0.3)
            inside.remove(n)

    try:
        started = asyncio.get_running_loop().time()
        await asyncio.wait_for(asyncio.gather(*(setup(n) for n in range(3))), 10)
        assert overlaps == 0
        assert asyncio.get_running_loop().time() - started >= 0.9  # one after another
    finally:
        for replica in replicas:
            await replica.aclose()


@pytest.mark.parametrize("database_kind", ["postgresql"])  # SQLite has one service
async def test_a_replica_starting_takes_no_live_job_and_takes_over_a_stopped_ones(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    """Start-up no longer resumes every unfinished job: a job another replica is driving (its
    lease renewed) stays with it. When that replica stops, a live one takes the job over."""
    simulator.config.processing_seconds = 60
    leases = EngineTimings(min_poll_seconds=0.05, max_poll_seconds=0.2, lease_seconds=1.5)
    first = await make_app(timings=leases)
    job = await start_processing_job(first, selfie)
    second = await make_app(timings=leases)
    await asyncio.sleep(2 * leases.lease_seconds)  # several renewals and take-over passes
    assert second.engine.active_jobs == 0
    assert first.engine.active_jobs == 1
    held = await second.jobs.get(job.id)
    assert held is not None and held.lease_owner == first.engine.lease.owner

    await first.stop()
    simulator.complete_now(next(iter(simulator.jobs)))
    for _ in range(200):
        done = await second.jobs.get(job.id)
        if done is not None and done.state == JobState.SUCCEEDED:
            break
        await asyncio.sleep(0.05)
    assert done is not None and done.state == JobState.SUCCEEDED
    assert done.lease_owner == second.engine.lease.owner
    assert len(simulator.jobs) == 1  # taken over by fetching, never submitted again


async def _follow(app: HeadshotApp, job_id: str, events: list[JobEvent]) -> None:
    """A person following a job through `app`, the events they see collected in `events`."""
    async for event in app.commands.follow(job_id):
        events.append(event)


@pytest.mark.parametrize("database_kind", ["postgresql"])  # one process per SQLite file
async def test_a_follower_on_another_replica_sees_the_job_end_and_its_webhook_wakes_it(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    """The job runs on one replica; the person follows it through another, and the provider's
    webhook reaches that other one too. Neither is lost: the webhook wakes the job where it is
    driven (its own polls are 30 s apart), and the end reaches the follower over NOTIFY."""
    simulator.config.processing_seconds = 60
    slow = EngineTimings(min_poll_seconds=30, max_poll_seconds=30, event_check_seconds=60)
    driving = await make_app(timings=slow)
    other = await make_app(timings=slow)
    assert isinstance(other.coordination, PostgresCoordination)
    job = await start_processing_job(driving, selfie)
    events: list[JobEvent] = []
    follower = asyncio.create_task(_follow(other, job.id, events))
    await other.coordination.listening()
    (sim_job,) = simulator.jobs.values()
    assert sim_job.webhook is not None
    sim_job.webhook = sim_job.webhook.replace(driving.base_url, other.base_url)
    started = asyncio.get_running_loop().time()
    simulator.complete_now(sim_job.id)
    await asyncio.wait_for(follower, 10)
    assert asyncio.get_running_loop().time() - started < 10
    kinds = [type(event).__name__ for event in events]
    # Where it stood when followed, what the driving replica told (relayed), then its end.
    assert kinds[0] == "Started" and kinds[-2:] == ["Progress", "Completed"], kinds
    final = events[-1]
    assert isinstance(final, Completed) and len(final.images) == 1
    assert simulator.webhook_deliveries[-1]["url"].startswith(other.base_url)
    assert other.engine.active_jobs == 0  # it only relayed


@pytest.mark.parametrize("database_kind", ["postgresql"])
async def test_a_follower_gets_the_end_even_when_the_message_is_lost(
    make_app: AppFactory, simulator: Simulator, selfie: bytes, database_url: str
) -> None:
    """LISTEN's connection can drop, taking messages with it: a follower of a job driven
    elsewhere is checked on now and then, and still gets the job's end."""
    simulator.config.processing_seconds = 60
    timings = EngineTimings(min_poll_seconds=0.05, max_poll_seconds=0.2, event_check_seconds=0.5)
    driving = await make_app(timings=timings)
    other = await make_app(timings=timings)
    job = await start_processing_job(driving, selfie)
    events: list[JobEvent] = []
    follower = asyncio.create_task(_follow(other, job.id, events))
    await other.coordination.listening()
    # Both replicas' listeners lose their connection just as the job ends.
    execute(
        database_url,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = :name",
        name=LISTENER_NAME,
    )
    simulator.complete_now(next(iter(simulator.jobs)))
    await asyncio.wait_for(follower, 10)
    assert isinstance(events[-1], Completed)


async def test_the_live_replicas_are_the_processes_on_the_database(
    make_app: AppFactory, database_kind: str
) -> None:
    """What a chat platform's global limits are shared among: on SQLite the one service; on
    PostgreSQL every process listening on the database, until it goes."""
    first = await make_app()
    if database_kind == "sqlite":
        assert await first.commands.replicas() == 1
        return
    second = await make_app()
    for app in (first, second):
        assert isinstance(app.coordination, PostgresCoordination)
        await app.coordination.listening()
    assert [await first.commands.replicas(), await second.commands.replicas()] == [2, 2]
    await second.stop()
    async with asyncio.timeout(10):  # its server process ends just after its connection
        while await first.commands.replicas() != 1:
            await asyncio.sleep(0.05)


async def test_two_coordinations_listening_on_a_database_count_two_replicas(
    postgres_url: str,
) -> None:
    replicas = [PostgresCoordination(postgres_url) for _ in range(2)]
    try:
        for replica in replicas:
            replica.listen("dispatch", lambda _: None)
            await replica.listening()
        assert [await replica.live_replicas() for replica in replicas] == [2, 2]
        await replicas[1].aclose()
        async with asyncio.timeout(10):
            while await replicas[0].live_replicas() != 1:
                await asyncio.sleep(0.05)
    finally:
        for replica in replicas:
            await replica.aclose()
