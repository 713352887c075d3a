"""Telegram's flood limits are the bot's, not a replica's: each replica sends at its share,
the limits divided by the replicas alive on the database, counted again now and then."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from adapters.telegram import pacing
from adapters.telegram.adapter import TelegramAdapter
from adapters.telegram.pacing import SharedRateLimiter
from storage.coordination import PostgresCoordination
from tests.conftest import AppFactory
from tests.fake_telegram import FakeTelegram

PERSON, GROUP = 4001, -1_004_002


async def sent_in(limiter: SharedRateLimiter, count: int, chat_id: int) -> float:
    """Seconds until `count` messages to `chat_id` all went through the limiter."""

    async def send() -> bool:
        return True

    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.gather(
        *(
            limiter.process_request(send, (), {}, "sendMessage", {"chat_id": chat_id}, None)
            for _ in range(count)
        )
    )
    return loop.time() - started


async def test_the_limiter_sends_at_its_share_of_telegrams_limits() -> None:
    alone = SharedRateLimiter()
    assert (alone.overall_per_second, alone.group_per_minute) == (30, 20)
    assert await sent_in(alone, 30, PERSON) < 0.5  # Telegram's 30 a second, all of them

    halved = SharedRateLimiter()
    halved.share(2)
    assert (halved.overall_per_second, halved.group_per_minute) == (15, 10)
    # 15 at once, then 15 a second.
    assert 0.9 <= await sent_in(halved, 30, PERSON) < 2.0
    # One group: 10 a minute, the 11th waits.
    group = SharedRateLimiter()
    group.share(2)
    assert await sent_in(group, 10, GROUP) < 0.5
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sent_in(group, 1, GROUP), 1.0)


async def test_a_share_under_one_message_a_period_still_sends_one_at_a_time() -> None:
    limiter = SharedRateLimiter()
    limiter.share(40)  # 0.75 a second overall, 0.5 a minute per group
    assert await sent_in(limiter, 1, GROUP) < 0.5
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sent_in(limiter, 1, GROUP), 1.0)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        yield server


async def test_each_replicas_adapter_sends_at_its_share_as_replicas_come_and_go(
    make_app: AppFactory,
    database_kind: str,
    fake: FakeTelegram,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pacing, "SHARE_CHECK_SECONDS", 0.05)
    settings = {"telegram_bot_token": fake.token, "telegram_api_base": fake.api_base}
    first = await make_app(**settings)
    # SQLite has one service; PostgreSQL any number of replicas.
    others = [await make_app(**settings)] if database_kind == "postgresql" else []
    for app in (first, *others):
        if isinstance(app.coordination, PostgresCoordination):
            await app.coordination.listening()
    adapter = TelegramAdapter(first.commands, first.settings, first.chat_webhooks)
    await adapter.start()
    try:
        limiter = adapter.rate_limiter
        assert isinstance(limiter, SharedRateLimiter)
        assert limiter.overall_per_second == 30 / (1 + len(others))
        assert limiter.group_per_minute == 20 / (1 + len(others))
        for other in others:
            await other.stop()
        async with asyncio.timeout(10):
            while limiter.replicas != 1:
                await asyncio.sleep(0.05)
        assert limiter.overall_per_second == 30
    finally:
        await adapter.stop()
