"""Telegram across replicas and crashes: the real python-telegram-bot against the fake Bot API,
the whole service on a real database. A wait for a photo or a style is in the database, so the
answer may reach another replica; every update is in the inbox before Telegram hears 200, so a
handler killed mid-update is handled again by the next process, and the job it queued is made
once however often the update is handled."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from backends.modelslab.simulator import Simulator
from storage.database import Database
from storage.inbox import MAX_ATTEMPTS, InboxRepository
from storage.leases import Lease
from tests import test_telegram
from tests.conftest import FAST, TEST_KEY
from tests.databases import execute, query
from tests.fake_telegram import FakeTelegram
from tests.test_telegram import (
    ALICE,
    GROUP,
    World,
    bot_reply_to,
    buttons,
    caption_or_text,
    free_port,
    result_in,
    results,
    selfie_jpeg,
)

# The fixtures of the Telegram tests: the fake Bot API with its users, and one service.
fake = test_telegram.fake
world = test_telegram.world

SHARED = {"pseudonym_key": "e5" * 32}
# A dead process's updates and waits are taken over this soon.
QUICK = dataclasses.replace(FAST, lease_seconds=1.0)


def webhook_url(replica: World) -> str:
    return str(replica.settings["public_base_url"]) + "/webhooks/telegram"


def post_to(fake: FakeTelegram, replica: World) -> None:
    """Have the fake post the next updates to this replica (a load balancer's choice)."""
    assert fake.webhook is not None
    fake.webhook["url"] = webhook_url(replica)


async def start_replica(
    tmp_path: Path, fake: FakeTelegram, simulator: Simulator, url: str, **settings: Any
) -> World:
    replica = World(tmp_path, fake, simulator, url)
    port = free_port()
    await replica.start(
        web_port=port, public_base_url=f"http://127.0.0.1:{port}", **SHARED, **settings
    )
    return replica


@pytest.fixture
async def replicas(
    tmp_path: Path, fake: FakeTelegram, simulator: Simulator, database_url: str
) -> AsyncIterator[Callable[..., Awaitable[World]]]:
    started: list[World] = []

    async def start(name: str, **settings: Any) -> World:
        replica = await start_replica(tmp_path / name, fake, simulator, database_url, **settings)
        started.append(replica)
        return replica

    yield start
    for replica in reversed(started):
        await replica.stop()


class Hold:
    """Keeps the fake's answers to one Bot API method until `release` (a slow Telegram)."""

    def __init__(self, fake: FakeTelegram, method: str) -> None:
        self._fake = fake
        self._original = fake._methods[method]
        self._open = asyncio.Event()
        self.calls = 0
        fake._methods[method] = self._held

    async def _held(self, params: Any) -> Any:
        self.calls += 1
        self._fake._changed()
        await self._open.wait()
        return self._original(params)

    def release(self) -> None:
        self._open.set()


# ---- waits on any replica ------------------------------------------------------------------------


@pytest.mark.parametrize("database_kind", ["postgresql"])
async def test_an_avatar_asked_on_one_replica_takes_the_photo_and_style_sent_to_others(
    replicas: Callable[..., Awaitable[World]], fake: FakeTelegram
) -> None:
    first = await replicas("first")
    second = await replicas("second")
    post_to(fake, first)
    command = fake.send_text(ALICE, ALICE, "/avatar")
    prompt = await bot_reply_to(fake, ALICE, command["message_id"], "Send me your selfie")
    await first.stop()  # nothing of the wait is left in a process's memory

    post_to(fake, second)
    photo = fake.send_photo(ALICE, ALICE, selfie_jpeg(), reply_to=prompt["message_id"])
    keyboard = await bot_reply_to(fake, ALICE, photo["message_id"], "Which style")
    await second.stop()

    await first.start()  # a fresh process, which sets the webhook to itself
    studio = next(data for label, data in buttons(keyboard) if label.lower().startswith("studio"))
    fake.press(ALICE, ALICE, keyboard["message_id"], studio)
    result = await result_in(fake, ALICE)
    assert caption_or_text(result).startswith("Done: 1 image · studio · seed ")
    assert await first.rows("jobs", "operation = 'avatar'") == 1
    assert await first.rows("jobs") == 1
    assert await first.rows("chat_waits") == 0


@pytest.mark.parametrize("database_kind", ["postgresql"])
async def test_an_ended_wait_is_announced_once_whatever_the_number_of_replicas(
    replicas: Callable[..., Awaitable[World]], fake: FakeTelegram
) -> None:
    first = await replicas("first", telegram_wait_seconds=1)
    await replicas("second", telegram_wait_seconds=1)
    await replicas("third", telegram_wait_seconds=1)
    post_to(fake, first)
    command = fake.send_text(ALICE, ALICE, "/headshot")
    prompt = await bot_reply_to(fake, ALICE, command["message_id"], "Send me your selfie")

    def announced() -> list[Any]:
        return [
            call
            for call in fake.calls_to("editMessageText")
            if call.params.get("message_id") == prompt["message_id"]
            and str(call.params.get("text", "")).startswith("No photo came")
        ]

    await fake.wait_for(announced, timeout=10)
    await asyncio.sleep(2.5)  # every replica has looked again since
    assert len(announced()) == 1
    assert await first.rows("chat_waits") == 0


async def test_forget_ends_the_waits_of_its_user(world: World) -> None:
    await world.start()
    fake = world.fake
    fake.send_photo(ALICE, ALICE, selfie_jpeg(), caption="/headshot studio")
    await result_in(fake, ALICE)
    command = fake.send_text(GROUP, ALICE, "/headshot")
    await bot_reply_to(fake, GROUP, command["message_id"], "Send me your selfie")
    async with asyncio.timeout(10):  # noted just after the question is sent
        while await world.rows("chat_waits") == 0:
            await asyncio.sleep(0.02)

    ask = fake.send_text(ALICE, ALICE, "/forget")
    prompt = await bot_reply_to(fake, ALICE, ask["message_id"], "This deletes everything")
    (confirm,) = [data for _, data in buttons(prompt)]
    fake.press(ALICE, ALICE, prompt["message_id"], confirm)
    await fake.wait_for(
        lambda: caption_or_text(fake.message(ALICE, prompt["message_id"]) or {}).startswith(
            "Done: deleted 1 job"
        )
    )
    assert await world.rows("chat_waits") == 0
    assert await world.rows("users") == 0


# ---- the inbox -----------------------------------------------------------------------------------


async def test_an_update_delivered_again_makes_no_second_job(world: World) -> None:
    port = free_port()
    await world.start(web_port=port, public_base_url=f"http://127.0.0.1:{port}")
    fake = world.fake
    assert fake.webhook is not None and world.adapter is not None
    secret = world.adapter.webhook_secret
    downloads = Hold(fake, "getFile")
    sent = fake.send_photo(ALICE, ALICE, selfie_jpeg(), caption="/headshot studio")
    await fake.wait_for(lambda: downloads.calls == 1)
    ((update_id, status),) = fake.webhook_deliveries
    assert status == 200
    update = {"update_id": update_id, "message": sent}

    # Delivered again while it is being handled: inert.
    assert await fake.post_webhook(update, secret=secret) == 200
    await asyncio.sleep(0.3)
    assert downloads.calls == 1
    assert len(fake.calls_to("sendMessage")) == 1  # the one "Working…" message
    downloads.release()
    await result_in(fake, ALICE)
    await world.no_deliveries_owed()
    assert await world.rows("chat_inbox") == 0

    # Delivered again once handled (Telegram missed our 200): handled, and the job is the same.
    assert await fake.post_webhook(update, secret=secret) == 200
    await fake.wait_for(
        lambda: any(
            caption_or_text(message).startswith("Got it: that is queued as job")
            for message in fake.bot_messages(ALICE)
        )
    )
    await asyncio.sleep(0.5)
    assert await world.rows("jobs") == 1
    assert len(results(fake, ALICE)) == 1
    assert await world.rows("chat_inbox") == 0


async def test_an_update_whose_handler_was_killed_is_handled_by_the_next_process(
    tmp_path: Path, fake: FakeTelegram, simulator: Simulator, database_url: str
) -> None:
    """A real process takes an update (Telegram hears 200), starts on it and is SIGKILLed; the
    next process on the database handles it, and the person gets their headshot."""
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MODELSLAB_", "TELEGRAM_"))},
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url,
        "IMAGE_STORE_SHARED": "1",
        "MODELSLAB_BASE_URL": simulator.base_url,
        "MODELSLAB_API_KEY": TEST_KEY,
        "WEB_PORT": str(port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "JOB_LEASE_SECONDS": "2",
        "TELEGRAM_BOT_TOKEN": fake.token,
        "TELEGRAM_API_BASE": fake.api_base,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "run",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await fake.wait_for(lambda: fake.webhook is not None, timeout=60)
        downloads = Hold(fake, "getFile")  # the selfie's download: the handler is mid-update
        sent = fake.send_photo(ALICE, ALICE, selfie_jpeg(), caption="/headshot studio")
        await fake.wait_for(lambda: downloads.calls == 1, timeout=30)
        assert fake.webhook_deliveries == [(fake.webhook_deliveries[0][0], 200)]
    finally:
        process.send_signal(signal.SIGKILL)
        _, stderr = await process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr.decode()
    assert query(database_url, "SELECT count(*) FROM chat_inbox") == [(1,)]
    assert query(database_url, "SELECT count(*) FROM jobs") == [(0,)]
    downloads.release()

    following = World(tmp_path, fake, simulator, database_url)
    following.timings = QUICK
    try:
        await following.start()
        result = await result_in(fake, ALICE)
        assert caption_or_text(result).startswith("Done: 1 image · studio · seed ")
        assert result["reply_to_message"]["message_id"] == sent["message_id"]
        await following.no_deliveries_owed()
        assert await following.rows("jobs") == 1
        assert await following.rows("chat_inbox") == 0
    finally:
        await following.stop()


async def left_in_inbox(world: World, update: dict[str, Any]) -> None:
    """`update` in the inbox, as a process that died while handling it left it."""
    fake = world.fake
    db = Database(world.database_url)
    try:
        await InboxRepository(db).accept(
            f"telegram:{fake.bot_id}:{update['update_id']}",
            platform="telegram",
            bot=str(fake.bot_id),
            person=str(ALICE),
            payload=update,
            lease=Lease("a process that died", 0.01),
        )
    finally:
        await db.dispose()


async def test_an_update_left_in_the_inbox_is_handled_at_the_next_start(world: World) -> None:
    """What a dead process left in the inbox (its lease run out) is handled by the next start,
    whether updates come by long polling (as here) or by webhook."""
    fake = world.fake
    sent = fake.send_photo(ALICE, ALICE, selfie_jpeg(), caption="/headshot studio")
    (update,) = fake._updates  # taken by the process that died: Telegram sends it no more
    fake._updates.clear()
    await left_in_inbox(world, update)
    await asyncio.sleep(0.05)

    await world.start()
    result = await result_in(fake, ALICE)
    assert result["reply_to_message"]["message_id"] == sent["message_id"]
    assert await world.rows("jobs") == 1
    async with asyncio.timeout(10):
        while await world.rows("chat_inbox"):
            await asyncio.sleep(0.02)


async def test_an_update_every_handler_died_on_is_dropped_and_its_sender_told(
    world: World,
) -> None:
    """Spent (MAX_ATTEMPTS handlers died on it): it is not handled again, but its sender hears
    that it failed rather than nothing at all. No job, no charge; the inbox is empty."""
    fake = world.fake
    sent = fake.send_photo(ALICE, ALICE, selfie_jpeg(), caption="/headshot studio")
    (update,) = fake._updates
    fake._updates.clear()
    await left_in_inbox(world, update)
    execute(world.database_url, "UPDATE chat_inbox SET attempts = :n", n=MAX_ATTEMPTS)
    await asyncio.sleep(0.05)

    await world.start()
    told = await bot_reply_to(fake, ALICE, sent["message_id"])
    assert caption_or_text(told).startswith("Something went wrong on our side (ref ")
    assert "nothing was charged" in caption_or_text(told)
    assert await world.rows("chat_inbox") == 0
    assert await world.rows("jobs") == 0
    assert len(fake.bot_messages(ALICE)) == 1
