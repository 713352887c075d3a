"""Fair dispatch end to end: with one provider slot, a heavy user's batch does not starve the
others. The simulator holds every job until the test completes it, so the order in which jobs
reach the provider is exactly the dispatcher's."""

from __future__ import annotations

import asyncio

from backends.modelslab.simulator import Simulator
from bot.jobs.events import Completed, Queued
from tests.chat import Exchange, TestChat
from tests.conftest import AppFactory


async def test_two_single_jobs_finish_before_the_heavy_users_second(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    simulator.config.processing_seconds = 600  # finished only when the test says so
    chat = TestChat(await make_app(modelslab_max_queued=1, max_active_per_user=10, daily_quota=10))
    sent: list[tuple[str, Exchange]] = []
    for user in ["heavy"] * 10 + ["light-1", "light-2"]:
        exchange = await chat.send(
            "/headshot", user=user, attachments={"selfie": selfie}, wait=False
        )
        assert exchange.reply.job_id, exchange.reply.text
        sent.append((user, exchange))
    owner_of = {exchange.reply.job_id: user for user, exchange in sent}
    # Every follower has seen where its job stands before anything moves (on a loaded machine
    # a follower may otherwise start only after the first completion).
    async with asyncio.timeout(10):
        while not all(exchange.events for _, exchange in sent):
            await asyncio.sleep(0.01)

    # Complete whatever the provider holds, one at a time, until every job has gone through.
    provider_order: list[str] = []
    while len(provider_order) < len(sent):
        job = await _next_processing(simulator, provider_order)
        provider_order.append(str(job.track_id))
        simulator.complete_now(job.id)
    for _, exchange in sent:
        await exchange.finished()
        assert isinstance(exchange.final, Completed)

    users_in_order = [owner_of[job_id] for job_id in provider_order]
    assert users_in_order[:4] == ["heavy", "light-1", "light-2", "heavy"]
    # Every waiting job was told where it stands; the light users went to the front.
    first_place = {}
    for user, exchange in sent[1:]:
        positions = [e.position for e in exchange.events if isinstance(e, Queued)]
        assert positions, exchange.texts
        first_place.setdefault(user, positions[0])
    assert first_place["light-1"] == 1 and first_place["light-2"] == 2


async def _next_processing(simulator: Simulator, seen: list[str]):  # type: ignore[no-untyped-def]
    for _ in range(500):
        for job in simulator.jobs.values():
            if job.status == "processing" and str(job.track_id) not in seen:
                return job
        await asyncio.sleep(0.02)
    raise AssertionError("no job reached the provider")
