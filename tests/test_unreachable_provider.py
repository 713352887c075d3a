"""A ModelsLab that cannot be reached: the whole service on a real database, the real client
dialling a loopback port nobody listens on. It says what is wrong (not "busy"), and gives up
after one short try when asked to (the command line)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path

import aiohttp
import pytest

from bot.app import HeadshotApp, Overrides
from bot.config import load_settings
from bot.generation import GenerationRequest
from bot.health.provider import OUTAGE_AFTER
from bot.jobs.events import Failed, JobEvent, Progress
from tests.conftest import FAST, TEST_KEY

OPTIONS = {"prompt": "corporate headshot", "width": 384, "height": 512}

StartApp = Callable[[Overrides], Awaitable[HeadshotApp]]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def base_url() -> str:
    return f"http://127.0.0.1:{_closed_port()}"


@pytest.fixture
async def start_app(tmp_path: Path, database_url: str, base_url: str) -> AsyncIterator[StartApp]:
    async with AsyncExitStack() as stack:

        async def start(overrides: Overrides) -> HeadshotApp:
            settings = load_settings(
                data_dir=tmp_path / "data",
                database_url=database_url,
                modelslab_base_url=base_url,
                modelslab_api_key=TEST_KEY,
                web_port=0,
                image_store_shared=True,
                selfie_retention_seconds=0,
            )
            app = HeadshotApp(settings, overrides)
            await stack.enter_async_context(app)
            return app

        yield start


async def _run_job(app: HeadshotApp, selfie: bytes) -> list[JobEvent]:
    job = await app.generation.request(
        GenerationRequest("test", "alice", "headshot", OPTIONS, selfie)
    )
    async with asyncio.timeout(60):
        return [event async for event in app.events.watch(job.id)]


async def test_asked_to_give_up_quickly_it_says_where_it_tried(
    start_app: StartApp, base_url: str, selfie: bytes
) -> None:
    app = await start_app(Overrides(timings=FAST, quick_provider_failure=True))
    loop = asyncio.get_running_loop()
    started = loop.time()
    events = await _run_job(app, selfie)
    final = events[-1]
    assert isinstance(final, Failed) and final.refunded
    # Stored as the reason and, on its own line, the provider's words (bot.jobs.reasons).
    assert final.reason == (
        "the generator cannot be reached\n"
        f"cannot reach ModelsLab at {base_url}: check the network or MODELSLAB_BASE_URL"
    )
    assert not any(isinstance(event, Progress) for event in events)  # no retry rounds
    assert loop.time() - started < 10


async def test_the_service_retries_and_then_says_unreachable_not_busy(
    start_app: StartApp, selfie: bytes
) -> None:
    app = await start_app(Overrides(timings=dataclasses.replace(FAST, busy_retry_rounds=2)))
    events = await _run_job(app, selfie)
    final = events[-1]
    assert isinstance(final, Failed) and final.refunded
    assert final.reason == "the generator cannot be reached right now; try again in a few minutes"
    progress = [event.text for event in events if isinstance(event, Progress)]
    assert progress == ["The generator cannot be reached; trying again shortly…"] * 2
    assert "busy" not in " ".join(event.text for event in events if hasattr(event, "text"))


async def test_an_unreachable_provider_is_degraded_and_the_replica_stays_ready(
    start_app: StartApp, selfie: bytes
) -> None:
    app = await start_app(Overrides(timings=FAST, quick_provider_failure=True))
    readyz = f"{app.base_url}/readyz"
    for _ in range(OUTAGE_AFTER):
        assert (await _get_json(readyz))[1]["generator"] == {"state": "ok"}
        assert isinstance((await _run_job(app, selfie))[-1], Failed)
    status, body = await _get_json(readyz)
    # Ready all the same: out of the load balancer, it would not hear Telegram's webhooks.
    assert (status, body["ready"], body["database"]) == (200, True, "writable")
    generator = body["generator"]
    assert isinstance(generator, dict)
    assert generator["state"] == "degraded"
    assert (generator["reason"], generator["failed_calls"]) == ("unreachable", OUTAGE_AFTER)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{app.base_url}/metrics") as answer,
    ):
        scraped = await answer.text()
    assert "headshot_provider_degraded 1.0" in scraped
    assert f'headshot_provider_errors_total{{kind="unreachable"}} {OUTAGE_AFTER}.0' in scraped


async def _get_json(url: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        return answer.status, await answer.json()
