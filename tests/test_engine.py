"""The whole path, end to end over real sockets: intake -> dispatcher -> the real ModelsLab client
-> the simulator -> webhook or poll -> fetch -> re-host -> settlement."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from backends.modelslab.simulator import Simulator
from bot.app import HeadshotApp
from bot.generation import GenerationRequest, RequestRefused
from bot.jobs.engine import ORPHAN_GRACE, EngineTimings
from bot.jobs.events import Completed, Failed, JobEvent, Queued, Started
from bot.jobs.rehost import RetryPolicy
from storage.records import JobRecord, JobState
from tests.conftest import TEST_KEY, AppFactory, make_image
from tests.databases import execute, stored_bytes
from tests.logs import assert_secret_absent, service_logging

OPTIONS: dict[str, dict[str, Any]] = {
    "headshot": {"prompt": "corporate headshot", "width": 384, "height": 512},
    "facegen": {"prompt": "studio portrait"},
    "avatar": {"prompt": "3d avatar", "controlnet_selection": ["pose", "canny"]},
    "flux_headshot": {"prompt": "linkedin headshot", "width": 512, "height": 512},
}


async def run_job(
    app: HeadshotApp,
    selfie: bytes,
    operation: str = "headshot",
    *,
    user: str = "alice",
    pose: bytes | None = None,
    **options: Any,
) -> tuple[str, list[JobEvent]]:
    job = await app.generation.request(
        GenerationRequest(
            platform="test",
            platform_user_id=user,
            operation=operation,
            options=options or OPTIONS[operation],
            selfie=selfie,
            pose_image=pose,
        )
    )
    events = [event async for event in app.events.watch(job.id)]
    return job.id, events


async def start_processing_job(app: HeadshotApp, selfie: bytes) -> JobRecord:
    """Queue a headshot for alice and return once the provider has it in processing."""
    job = await app.generation.request(
        GenerationRequest("test", "alice", "headshot", OPTIONS["headshot"], selfie)
    )
    for _ in range(200):
        current = await app.jobs.get(job.id)
        if current is not None and current.state == JobState.PROCESSING:
            return current
        await asyncio.sleep(0.025)
    raise AssertionError(f"job {job.id} never reached processing")


async def allowance_left(app: HeadshotApp, user: str = "alice") -> int:
    record = await app.accounts.user("test", user)
    today = datetime.now(UTC).date()
    left = await app.accounts.allowance(
        record.id, daily_quota=app.settings.daily_quota, today=today
    )
    return left.total


@pytest.mark.parametrize("operation", list(OPTIONS))
@pytest.mark.parametrize("processing_seconds", [0.0, 0.3], ids=["immediate", "processing"])
@pytest.mark.parametrize("webhooks", [True, False], ids=["webhook", "polling"])
async def test_every_operation_on_every_path(
    make_app: AppFactory,
    simulator: Simulator,
    selfie: bytes,
    operation: str,
    processing_seconds: float,
    webhooks: bool,
) -> None:
    simulator.config.processing_seconds = processing_seconds
    app = await make_app(local_webhooks=webhooks)
    pose = make_image((200, 300), "navy") if operation == "avatar" else None
    job_id, events = await run_job(app, selfie, operation, pose=pose)

    final = events[-1]
    assert isinstance(final, Completed), events
    assert len(final.images) == 1
    if processing_seconds:
        assert any(isinstance(e, Started) for e in events)
    image = final.images[0]
    assert image.url.startswith(f"{app.base_url}/images/")
    assert simulator.base_url not in image.url
    async with httpx.AsyncClient() as http:
        served = await http.get(image.url)
    assert served.status_code == 200
    assert served.headers["content-type"] == image.content_type
    assert served.content == await app.store.get(image.content_key)

    job = await app.jobs.get(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED
    assert job.selfie_key is None and job.pose_key is None
    assert not [k for k in await app.store.keys() if k.startswith("inputs/")]
    assert await allowance_left(app) == app.settings.daily_quota - 1
    delivered = [d for d in simulator.webhook_deliveries if processing_seconds]
    assert bool(delivered) == (webhooks and bool(processing_seconds))


async def test_webhook_wakes_the_job_long_before_the_next_poll(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    simulator.config.processing_seconds = 0.3
    slow_polls = EngineTimings(min_poll_seconds=20, max_poll_seconds=20, job_timeout_seconds=60)
    app = await make_app(timings=slow_polls)
    started = time.monotonic()
    _, events = await run_job(app, selfie)
    assert isinstance(events[-1], Completed)
    assert time.monotonic() - started < 5
    assert simulator.webhook_deliveries


async def test_duplicate_and_out_of_order_webhooks_change_nothing(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    simulator.config.processing_seconds = 0.2
    simulator.config.webhook_duplicates = 3
    simulator.config.webhook_jitter_seconds = 0.3
    app = await make_app()
    results = await asyncio.gather(*(run_job(app, selfie, user=f"u{n}") for n in range(5)))
    for job_id, events in results:
        assert [type(e) for e in events].count(Completed) == 1
        assert len(await app.jobs.outputs(job_id)) == 1
    for _ in range(200):  # let the late duplicates land (jittered, so wait for them)
        if len(simulator.webhook_deliveries) >= 5 * 4:
            break
        await asyncio.sleep(0.05)
    assert len(simulator.webhook_deliveries) >= 5 * 4
    for job_id, _ in results:
        job = await app.jobs.get(job_id)
        assert job is not None and job.state == JobState.SUCCEEDED
        assert len(await app.jobs.outputs(job_id)) == 1


async def test_forged_webhooks_change_nothing(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    simulator.config.processing_seconds = 30
    app = await make_app(timings=EngineTimings(min_poll_seconds=20, max_poll_seconds=20))
    job = await start_processing_job(app, selfie)
    (sim_job,) = simulator.jobs.values()
    assert sim_job.webhook is not None
    forged_success = {"status": "success", "id": sim_job.id, "output": ["http://evil/x.png"]}
    async with httpx.AsyncClient() as http:
        unknown = await http.post(
            f"{app.base_url}/webhooks/modelslab/not-a-real-token", json=forged_success
        )
        # The right path with a lying body: the engine asks the provider, who says processing.
        lying = await http.post(sim_job.webhook, json=forged_success)
        garbage = await http.post(sim_job.webhook, content=b"\x00not json")
    assert unknown.status_code == 404
    assert lying.status_code == 200
    assert garbage.status_code == 400
    await asyncio.sleep(0.3)
    current = await app.jobs.get(job.id)
    assert current is not None and current.state == JobState.PROCESSING
    assert await app.jobs.outputs(job.id) == []
    # Once the provider really finishes, the same webhook path completes the job.
    simulator.complete_now(sim_job.id)
    async for event in app.events.watch(job.id):
        final = event
    assert isinstance(final, Completed)


async def test_expired_output_link_fails_the_job_with_a_refund(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    simulator.config.link_ttl_seconds = 0.0
    app = await make_app()
    job_id, events = await run_job(app, selfie)
    final = events[-1]
    assert isinstance(final, Failed) and final.refunded
    assert "expired" in final.reason
    assert await allowance_left(app) == app.settings.daily_quota
    job = await app.jobs.get(job_id)
    assert job is not None and job.state == JobState.FAILED


async def test_provider_failure_refunds(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    simulator.config.failure_rate = 1.0
    simulator.config.processing_seconds = 0.1
    app = await make_app()
    _, events = await run_job(app, selfie)
    final = events[-1]
    assert isinstance(final, Failed) and final.refunded
    assert "Your credits were returned" in final.text
    assert await allowance_left(app) == app.settings.daily_quota


async def test_fewer_outputs_than_requested_refund_the_difference(
    make_app: AppFactory, selfie: bytes
) -> None:
    app = await make_app()
    # Documented quirk: at 512×768 head_shot returns one image even when two are asked for.
    options = {"prompt": "p", "samples": 2, "width": 512, "height": 768}
    _, events = await run_job(app, selfie, **options)
    final = events[-1]
    assert isinstance(final, Completed)
    assert len(final.images) == 1 and final.refunded == 1
    assert await allowance_left(app) == app.settings.daily_quota - 1


async def test_quota_refusal_reserves_nothing(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    app = await make_app(daily_quota=2)
    _, events = await run_job(app, selfie)
    assert isinstance(events[-1], Completed)
    submitted = len(simulator.jobs)
    with pytest.raises(RequestRefused, match=r"asked for 2 images but have 1 credit left"):
        await run_job(app, selfie, prompt="p", samples=2)
    _, events = await run_job(app, selfie)
    assert isinstance(events[-1], Completed)
    submitted = len(simulator.jobs)
    with pytest.raises(RequestRefused, match=r"no credits left.*resets at 00:00 UTC"):
        await run_job(app, selfie)
    assert len(simulator.jobs) == submitted
    assert not [k for k in await app.store.keys() if k.startswith("inputs/")]


@pytest.mark.parametrize(
    ("selfie_bytes", "options", "message"),
    [
        (b"%PDF-1.4 not an image", OPTIONS["headshot"], "isn't an image"),
        (make_image((256, 320)), {"prompt": "p", "samples": 3}, "samples must be an integer"),
        (make_image((256, 320)), {"prompt": "p", "width": 4096}, "width must be an integer"),
        (make_image((256, 320)), {"prompt": " "}, "prompt must be a non-empty text"),
        (make_image((256, 320)), {"prompt": "p", "s_scale": 9}, "s_scale must be a number"),
    ],
)
async def test_bad_input_is_refused_before_anything_moves(
    make_app: AppFactory,
    simulator: Simulator,
    selfie_bytes: bytes,
    options: dict[str, Any],
    message: str,
) -> None:
    app = await make_app()
    with pytest.raises(RequestRefused, match=message):
        await run_job(app, selfie_bytes, **options)
    assert simulator.requests == []
    assert await app.store.keys() == []
    assert await allowance_left(app) == app.settings.daily_quota


async def test_jobs_wait_in_our_queue_instead_of_being_refused(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    simulator.config.processing_seconds = 0.3
    simulator.config.max_queued = 2
    app = await make_app(modelslab_max_queued=2, daily_quota=10)
    results = await asyncio.gather(*(run_job(app, selfie, user=f"u{n}") for n in range(6)))
    assert all(isinstance(events[-1], Completed) for _, events in results)
    assert 429 not in {status for _, status in simulator.requests}
    positions = [e.position for _, events in results for e in events if isinstance(e, Queued)]
    assert positions and max(positions) >= 3


async def test_provider_rate_limit_and_outage_are_retried(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    simulator.config.retry_after = 0
    simulator.config.inject = [429, 503, 503, 503, 503]
    app = await make_app()
    _, events = await run_job(app, selfie)
    assert isinstance(events[-1], Completed)
    statuses = [status for _, status in simulator.requests]
    assert statuses[:2] == [429, 503]


async def test_wrong_api_key_fails_with_an_actionable_reason_and_refund(
    make_app: AppFactory, selfie: bytes
) -> None:
    app = await make_app(modelslab_api_key="sk-wrong-key-0000")
    _, events = await run_job(app, selfie)
    final = events[-1]
    assert isinstance(final, Failed) and final.refunded
    assert "misconfigured" in final.reason


async def test_the_api_key_never_reaches_logs_or_the_database(
    make_app: AppFactory,
    simulator: Simulator,
    selfie: bytes,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
    database_url: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    simulator.config.processing_seconds = 0.1
    simulator.config.retry_after = 0
    simulator.config.inject = [429, 500]
    # Nothing blanks it here (no secrets given): it is never logged at all, in either format.
    with service_logging("DEBUG", [], log_format="json") as written:
        logging.getLogger().addHandler(caplog.handler)
        app = await make_app()
        await run_job(app, selfie)
        simulator.config.failure_rate = 1.0
        await run_job(app, selfie)
        simulator.config.api_keys = frozenset({"another"})
        await run_job(app, selfie)
    assert caplog.records
    assert TEST_KEY not in caplog.text
    assert_secret_absent(written.getvalue(), TEST_KEY, json_format=True)
    for path in (tmp_path / "data").rglob("*"):
        if path.is_file():
            assert TEST_KEY.encode() not in path.read_bytes(), path
    assert TEST_KEY.encode() not in stored_bytes(database_url)


async def test_a_restarted_service_finishes_what_the_last_one_started(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    simulator.config.processing_seconds = 0.5
    first = await make_app(timings=EngineTimings(min_poll_seconds=30, max_poll_seconds=30))
    job = await start_processing_job(first, selfie)
    await first.stop()
    second = await make_app(
        local_webhooks=False,
        timings=EngineTimings(min_poll_seconds=0.05, retry=RetryPolicy(0.01, 0.1)),
    )
    await second.engine.wait_idle()
    done = await second.jobs.get(job.id)
    assert done is not None and done.state == JobState.SUCCEEDED
    assert len(simulator.jobs) == 1  # resumed by fetching, not submitted again


async def _output_requested(simulator: Simulator) -> None:
    """Until the simulator has been asked for an output (it answers after its delay)."""
    async with asyncio.timeout(10):
        while simulator.output_requests == 0:
            await asyncio.sleep(0.01)


async def _job_keeping_its_image(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> tuple[HeadshotApp, JobRecord]:
    """An app whose job has the generator's answer and is downloading its image (for 1 s)."""
    simulator.config.processing_seconds = 0.3
    simulator.config.output_delay_seconds = 1.0
    app = await make_app()
    job = await start_processing_job(app, selfie)
    await _output_requested(simulator)
    return app, job


async def test_a_job_ended_elsewhere_while_its_image_is_kept_leaves_no_image_behind(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    app, job = await _job_keeping_its_image(make_app, simulator, selfie)
    # The answer is not written yet (the row still says processing) when something else ends
    # the job: the engine's end is refused, and the image it stored meanwhile is deleted.
    assert (await app.jobs.get(job.id)).state == JobState.PROCESSING  # type: ignore[union-attr]
    assert await app.jobs.fail(job.id, "ended elsewhere", state=JobState.CANCELLED)
    await app.engine.wait_idle()
    ended = await app.jobs.get(job.id)
    assert ended is not None and ended.state == JobState.CANCELLED
    assert ended.error == "ended elsewhere"
    assert await app.jobs.outputs(job.id) == []
    assert [key for key in await app.store.keys() if not key.startswith("inputs/")] == []
    assert await allowance_left(app) == app.settings.daily_quota  # released once, not paid


async def test_a_job_taken_over_while_its_image_is_kept_leaves_the_image_to_the_new_owner(
    make_app: AppFactory, simulator: Simulator, selfie: bytes, database_url: str
) -> None:
    """The other process may be storing the very same image (the store is content-addressed):
    the process whose end is refused does not delete it."""
    app, job = await _job_keeping_its_image(make_app, simulator, selfie)
    execute(database_url, "UPDATE jobs SET lease_owner = 'elsewhere' WHERE id = :id", id=job.id)
    await app.engine.wait_idle()
    taken = await app.jobs.get(job.id)
    assert taken is not None and taken.state == JobState.PROCESSING
    assert taken.lease_owner == "elsewhere"
    kept = [key for key in await app.store.keys() if not key.startswith("inputs/")]
    assert len(kept) == 1  # stored before the end was refused, and left there


def slow_move_to_processing(
    app: HeadshotApp, monkeypatch: pytest.MonkeyPatch, seen: list[str], before: Any = None
) -> None:
    """The real repository's move to processing, half a second late (noted in `seen` once
    written); `before(job_id)` runs first."""
    transition = app.jobs.transition

    async def late(job_id: str, expected: list[JobState], to: JobState, **fields: Any) -> Any:
        if to != JobState.PROCESSING or JobState.PROCESSING in expected:
            return await transition(job_id, expected, to, **fields)
        await asyncio.sleep(0.5)
        if before is not None:
            before(job_id)
        moved = await transition(job_id, expected, to, **fields)
        seen.append("processing written" if moved is not None else "processing refused")
        return moved

    monkeypatch.setattr(app.jobs, "transition", late)


def fetches(simulator: Simulator) -> int:
    return sum(1 for path, _status in simulator.requests if "/fetch" in path)


async def test_the_result_is_fetched_while_the_move_to_processing_is_written(
    make_app: AppFactory, simulator: Simulator, selfie: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A webhook that comes before that write has ended is served at once; the job's end is
    written after it, never before."""
    simulator.config.processing_seconds = 0.05
    app = await make_app()
    seen: list[str] = []
    slow_move_to_processing(app, monkeypatch, seen)
    ends = app.jobs.succeed

    async def succeed(*args: Any, **kwargs: Any) -> Any:
        seen.append("end written")
        return await ends(*args, **kwargs)

    monkeypatch.setattr(app.jobs, "succeed", succeed)
    job = await app.generation.request(
        GenerationRequest("test", "alice", "headshot", OPTIONS["headshot"], selfie)
    )
    async with asyncio.timeout(10):
        while fetches(simulator) == 0:
            await asyncio.sleep(0.01)
    assert seen == []  # fetched, and the move to processing not written yet
    await app.engine.wait_idle()
    assert seen == ["processing written", "end written"]
    done = await app.jobs.get(job.id)
    assert done is not None and done.state == JobState.SUCCEEDED and done.provider_id


async def test_a_job_taken_over_before_its_move_to_processing_is_written_is_not_ended_here(
    make_app: AppFactory,
    simulator: Simulator,
    selfie: bytes,
    monkeypatch: pytest.MonkeyPatch,
    database_url: str,
) -> None:
    simulator.config.processing_seconds = 0.05
    app = await make_app()
    seen: list[str] = []

    def taken_over(job_id: str) -> None:
        execute(database_url, "UPDATE jobs SET lease_owner = 'elsewhere' WHERE id = :id", id=job_id)

    slow_move_to_processing(app, monkeypatch, seen, before=taken_over)
    job = await app.generation.request(
        GenerationRequest("test", "alice", "headshot", OPTIONS["headshot"], selfie)
    )
    await app.engine.wait_idle()
    assert seen == ["processing refused"]
    left = await app.jobs.get(job.id)
    assert left is not None and left.state == JobState.SUBMITTED
    assert left.lease_owner == "elsewhere"
    assert await app.jobs.outputs(job.id) == []


async def test_an_attempt_whose_other_output_fails_leaves_none_of_its_images(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    """Each output is stored as soon as it is checked: when another of the attempt's outputs
    is refused, the job fails, its credits come back, and the images stored for it go."""
    simulator.config.processing_seconds = 0.3
    app = await make_app()
    options = {**OPTIONS["headshot"], "samples": 2}
    job = await app.generation.request(
        GenerationRequest("test", "alice", "headshot", options, selfie)
    )
    async with asyncio.timeout(10):
        while not simulator.jobs:
            await asyncio.sleep(0.01)
    (made,) = simulator.jobs.values()
    made.outputs[1] = b"%PDF-1.7 not an image"
    await app.engine.wait_idle()
    ended = await app.jobs.get(job.id)
    assert ended is not None and ended.state == JobState.FAILED
    assert [key for key in await app.store.keys() if not key.startswith("inputs/")] == []
    assert await allowance_left(app) == app.settings.daily_quota


async def test_an_answered_job_frees_its_slot_while_its_images_are_kept(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    """Its images can take long to keep (here a slow download): the generator's only slot goes
    to the job waiting for it once the answer is in hand, though the answer is written only
    with the job's end (the row still says processing meanwhile)."""
    simulator.config.processing_seconds = 0.3
    simulator.config.output_delay_seconds = 1.0
    simulator.config.max_queued = 1
    app = await make_app(modelslab_max_queued=1)
    first = await start_processing_job(app, selfie)
    second = await app.generation.request(
        GenerationRequest("test", "bob", "headshot", OPTIONS["headshot"], selfie)
    )
    await _output_requested(simulator)
    async with asyncio.timeout(10):
        # The first job's image is still on its way, and the second job has its slot.
        while (await app.jobs.get(second.id)).state == JobState.QUEUED:  # type: ignore[union-attr]
            await asyncio.sleep(0.01)
    assert (await app.jobs.get(first.id)).state == JobState.PROCESSING  # type: ignore[union-attr]
    await app.engine.wait_idle()
    for job_id in (first.id, second.id):
        assert (await app.jobs.get(job_id)).state == JobState.SUCCEEDED  # type: ignore[union-attr]


async def test_generate_drives_only_its_own_job_and_sweeps_nothing(
    make_app: AppFactory, simulator: Simulator, selfie: bytes, tmp_path: Path
) -> None:
    """`headshot-bot generate` pointed at the service's database: the service's unfinished job
    and its stored selfie are the service's, not the command line's."""
    simulator.config.processing_seconds = 60
    service = await make_app(timings=EngineTimings(min_poll_seconds=30, max_poll_seconds=30))
    theirs = await start_processing_job(service, selfie)
    await service.stop()
    store = tmp_path / "data" / "images"
    stale_orphan = store / "inputs" / "stale.jpg"
    stale_orphan.write_bytes(b"an old selfie no job needs")
    an_hour_ago = time.time() - 3600
    os.utime(stale_orphan, (an_hour_ago, an_hour_ago))

    simulator.config.processing_seconds = 0.0
    command_line = await make_app(service=False)
    mine, events = await run_job(command_line, selfie, user="operator")
    assert isinstance(events[-1], Completed)
    await asyncio.wait_for(command_line.engine.wait_idle(), 5)  # not driving theirs
    untouched = await command_line.jobs.get(theirs.id)
    assert untouched is not None and untouched == theirs
    assert theirs.selfie_key is not None and (store / theirs.selfie_key).is_file()
    assert stale_orphan.is_file()
    assert len(simulator.jobs) == 2  # theirs submitted once; never fetched or sent again here
    await command_line.stop()

    # The service itself, at its next start, takes its job back and sweeps the orphan.
    simulator.complete_now(next(iter(simulator.jobs)))
    again = await make_app(timings=EngineTimings(min_poll_seconds=0.05, max_poll_seconds=0.1))
    await again.engine.wait_idle()
    done = await again.jobs.get(theirs.id)
    assert done is not None and done.state == JobState.SUCCEEDED
    assert not stale_orphan.exists()
    assert mine != theirs.id


async def test_the_sweep_spares_a_selfie_whose_job_is_being_inserted(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """A selfie is stored just before its job is inserted: a sweep at that moment must not
    take it for an orphan. Only selfies written ORPHAN_GRACE ago or more are looked at."""
    inputs = tmp_path / "data" / "images" / "inputs"
    inputs.mkdir(parents=True)
    (inputs / "being-inserted.jpg").write_bytes(b"a selfie whose job is not committed yet")
    stale = inputs / "orphan.jpg"
    stale.write_bytes(b"a selfie whose job is long gone")
    old = time.time() - ORPHAN_GRACE.total_seconds() - 60
    os.utime(stale, (old, old))
    app = await make_app()
    assert (inputs / "being-inserted.jpg").is_file()
    assert not stale.exists()
    await app.engine.sweep_inputs()
    assert (inputs / "being-inserted.jpg").is_file()


async def test_the_start_deletes_what_unfinished_writes_left(
    make_app: AppFactory, tmp_path: Path
) -> None:
    """A process killed in the middle of an image write (a decode worker at its time limit,
    the service) leaves its temporary file: a copy of a selfie, say. The next start deletes
    those begun ORPHAN_GRACE ago or more; one being written now stays."""
    images = tmp_path / "data" / "images"
    (images / "inputs").mkdir(parents=True)
    stale = [images / "inputs" / ".tmp-k1ll3d", images / ".tmp-0utput"]
    for path in stale:
        path.write_bytes(b"half a selfie")
        old = time.time() - ORPHAN_GRACE.total_seconds() - 60
        os.utime(path, (old, old))
    being_written = images / "inputs" / ".tmp-n0w"
    being_written.write_bytes(b"a selfie on its way")
    await make_app()
    assert [path for path in stale if path.exists()] == []
    assert being_written.is_file()


@pytest.mark.parametrize("ending", ["succeeded", "failed"])
async def test_a_stop_while_a_job_is_ending_lets_it_finish_ending(
    make_app: AppFactory, simulator: Simulator, selfie: bytes, tmp_path: Path, ending: str
) -> None:
    # The stop lands between the commit that ends the job and deleting its selfie: it waits
    # for the delete instead of leaving the selfie behind until the next start.
    if ending == "failed":
        simulator.config.failure_rate = 1.0
    app = await make_app(selfie_retention_seconds=0)
    deleting = asyncio.Event()
    delete = app.store.delete

    async def slow_delete(key: str) -> None:
        if key.startswith("inputs/"):
            deleting.set()
            await asyncio.sleep(0.2)
        await delete(key)

    app.store.delete = slow_delete  # type: ignore[method-assign]
    job = await app.generation.request(
        GenerationRequest("test", "alice", "headshot", OPTIONS["headshot"], selfie)
    )
    await asyncio.wait_for(deleting.wait(), 10)
    await app.stop()

    assert not list((tmp_path / "data" / "images" / "inputs").iterdir())
    again = await make_app(selfie_retention_seconds=0)
    done = await again.jobs.get(job.id)
    assert done is not None and done.state == JobState(ending)


async def test_a_selfie_that_cannot_be_deleted_does_not_hold_up_the_result(
    make_app: AppFactory, selfie: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = await make_app(selfie_retention_seconds=0)
    delete = app.store.delete

    async def failing_delete(key: str) -> None:
        if key.startswith("inputs/"):
            raise OSError("the store is read-only just now")
        await delete(key)

    app.store.delete = failing_delete  # type: ignore[method-assign]
    _, events = await run_job(app, selfie)
    assert isinstance(events[-1], Completed)
    assert "deleting its selfie failed" in caplog.text
    inputs = tmp_path / "data" / "images" / "inputs"
    (left,) = inputs.iterdir()
    await app.stop()

    # A later sweep deletes it, once it is past the grace that spares selfies being inserted.
    old = time.time() - ORPHAN_GRACE.total_seconds() - 60
    os.utime(left, (old, old))
    await make_app(selfie_retention_seconds=0)
    assert not list(inputs.iterdir())
