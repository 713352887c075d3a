"""Telegram's webhook and the body cap: the real adapter behind the real web server, posted to
over a real socket (the fake Bot API in `tests/fake_telegram.py` stands in for Telegram)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from backends.modelslab.simulator import Simulator
from bot.web import MAX_REQUEST_BYTES
from tests.fake_telegram import FakeTelegram
from tests.test_telegram import BOB, World, free_port

SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


@pytest.fixture
async def world(tmp_path: Path, simulator: Simulator, database_url: str) -> AsyncIterator[World]:
    async with FakeTelegram() as fake:
        fake.add_user(BOB, "Bob")
        w = World(tmp_path, fake, simulator, database_url)
        yield w
        await w.stop()


def _update(text: str) -> dict[str, object]:
    return {
        "update_id": 424_242,
        "message": {
            "message_id": 1,
            "date": 1_700_000_000,
            "chat": {"id": BOB, "type": "private", "first_name": "Bob"},
            "from": {"id": BOB, "is_bot": False, "first_name": "Bob"},
            "text": text,
        },
    }


async def test_an_oversized_update_is_answered_413(world: World) -> None:
    port = free_port()
    await world.start(web_port=port, public_base_url=f"http://127.0.0.1:{port}")
    assert world.adapter is not None
    url = f"http://127.0.0.1:{port}/webhooks/telegram"
    headers = {SECRET_HEADER: world.adapter.webhook_secret, "Content-Type": "application/json"}
    # A well-formed update, just too large: only its size is wrong.
    oversized = json.dumps(_update("x" * MAX_REQUEST_BYTES)).encode()
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=oversized, headers=headers) as response:
            assert response.status == 413
        # Without the secret, the size never matters: refused before the body is read.
        async with session.post(
            url, data=oversized, headers={"Content-Type": "application/json"}
        ) as response:
            assert response.status == 403
        async with session.post(url, data=b"[1, 2]", headers=headers) as response:
            assert response.status == 400  # small but not an update: still a 400
    assert await world.rows("chat_inbox") == 0
