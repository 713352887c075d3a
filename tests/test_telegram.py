"""The Telegram adapter end to end: the real python-telegram-bot against the fake Bot API in
`tests/fake_telegram.py` (loopback HTTP), the whole service behind it with the real ModelsLab
client against the simulator over HTTP, and a real SQLite file."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image
from sqlalchemy import text
from telegram.ext import AIORateLimiter

from adapters.telegram import TelegramAdapter
from adapters.telegram.delivery import EditBudget
from adapters.telegram.outgoing import PHOTO_LIMIT, uploads
from adapters.telegram.watching import sends_a_message
from backends.modelslab.simulator import Simulator
from bot import replies
from bot.app import HeadshotApp, Overrides
from bot.config import ConfigError, load_settings
from bot.logs import LogFormat
from bot.ui import ImageRef
from tests.conftest import FAST, TEST_KEY, make_image, shared_image_workers
from tests.databases import stored_bytes
from tests.fake_telegram import FakeTelegram
from tests.logs import assert_secret_absent, json_lines, service_logging

GROUP = -1001234567890
ALICE, BOB, MOD, OWNER, STRANGER = 501, 502, 503, 599, 504
EDIT_INTERVAL = 0.05


def selfie_jpeg() -> bytes:
    return make_image(fmt="JPEG")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class World:
    """Fake Telegram, simulator, the service and its Telegram adapter; restartable."""

    def __init__(
        self, tmp_path: Path, fake: FakeTelegram, simulator: Simulator, database_url: str
    ) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.fake = fake
        self.simulator = simulator
        self.app: HeadshotApp | None = None
        self.adapter: TelegramAdapter | None = None
        self.settings: dict[str, Any] = {}
        self.timings = FAST

    async def start(self, **settings: Any) -> World:
        self.settings = settings or self.settings
        data_dir = self.tmp_path / "data"
        values: dict[str, Any] = {
            "data_dir": data_dir,
            "database_url": self.database_url,
            "modelslab_base_url": self.simulator.base_url,
            "modelslab_api_key": TEST_KEY,
            "image_store_shared": True,
            "web_port": 0,
            "selfie_retention_seconds": 600,
            "owner_ids": f"telegram:{OWNER}",
            "telegram_bot_token": self.fake.token,
            "telegram_api_base": self.fake.api_base,
            **self.settings,
        }
        overrides = Overrides(
            timings=self.timings, local_webhooks=True, images=shared_image_workers()
        )
        self.app = HeadshotApp(load_settings(**values), overrides)
        await self.app.start()
        self.adapter = TelegramAdapter(
            self.app.commands,
            self.app.settings,
            self.app.chat_webhooks,
            edit_interval=EDIT_INTERVAL,
            # Telegram's real limits would make the tests wait a minute per 20 group messages;
            # flood-control answers are still waited out and retried.
            rate_limiter=AIORateLimiter(overall_max_rate=0, group_max_rate=0, max_retries=3),
        )
        await self.adapter.start()
        return self

    async def stop(self) -> None:
        if self.adapter is not None:
            await self.adapter.stop()
            self.adapter = None
        if self.app is not None:
            await self.app.stop()
            self.app = None

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def rows(self, table: str, where: str = "1 = 1") -> int:
        assert self.app is not None
        async with self.app.db.read() as conn:
            query = text(f"SELECT count(*) FROM {table} WHERE {where}")
            return int((await conn.execute(query)).scalar_one())

    async def no_deliveries_owed(self) -> None:
        async with asyncio.timeout(10):
            while await self.rows("deliveries"):
                await asyncio.sleep(0.02)


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as server:
        for user in (ALICE, BOB, MOD, OWNER, STRANGER):
            server.add_user(user, f"User{user}")
        server.add_group(GROUP, "Headshots", owner=OWNER, admins=[MOD], members=[ALICE, BOB])
        yield server


@pytest.fixture
async def world(
    tmp_path: Path, fake: FakeTelegram, simulator: Simulator, database_url: str
) -> AsyncIterator[World]:
    w = World(tmp_path, fake, simulator, database_url)
    yield w
    await w.stop()


# ---- reading what the bot did ---------------------------------------------------------------


def caption_or_text(message: dict[str, Any]) -> str:
    return str(message.get("caption") or message.get("text") or "")


def buttons(message: dict[str, Any]) -> list[tuple[str, str]]:
    markup = message.get("reply_markup") or {}
    return [
        (button["text"], button.get("callback_data", ""))
        for row in markup.get("inline_keyboard", [])
        for button in row
    ]


def results(fake: FakeTelegram, chat_id: int) -> list[dict[str, Any]]:
    return [m for m in fake.bot_messages(chat_id) if caption_or_text(m).startswith("Done:")]


async def result_in(fake: FakeTelegram, chat_id: int, count: int = 1) -> dict[str, Any]:
    await fake.wait_for(lambda: len(results(fake, chat_id)) >= count, timeout=30)
    return results(fake, chat_id)[count - 1]


async def bot_reply_to(
    fake: FakeTelegram, chat_id: int, message_id: int, startswith: str = ""
) -> dict[str, Any]:
    """The bot's (current) message answering `message_id` whose text starts as given."""

    def found() -> dict[str, Any] | None:
        for message in fake.bot_messages(chat_id):
            replied = message.get("reply_to_message") or {}
            if replied.get("message_id") == message_id and caption_or_text(message).startswith(
                startswith
            ):
                return message
        return None

    return await fake.wait_for(found, timeout=30)


def job_of(message: dict[str, Any]) -> str:
    return next(data for _, data in buttons(message) if "job=" in data).split("job=")[1]


async def assert_nothing_reserved(world: World) -> None:
    assert await world.rows("jobs") == 0
    assert await world.rows("credit_ledger") == 0


# ---- registration --------------------------------------------------------------------------


async def test_command_menus_come_from_the_command_layer(world: World) -> None:
    await world.start()
    fake = world.fake
    everyone = [c["command"] for c in fake.commands["default"]]
    assert everyone[:4] == ["headshot", "facegen", "avatar", "flux_headshot"]
    assert {"styles", "history", "show", "reroll", "delete", "quota", "forget", "help"} <= set(
        everyone
    )
    assert "cancel" in everyone and "admin" not in everyone
    admins = [c["command"] for c in fake.commands["all_chat_administrators"]]
    assert "admin" in admins and set(everyone) <= set(admins)
    assert "admin" in [c["command"] for c in fake.commands[f"chat:{OWNER}"]]
    headshot = next(c for c in fake.commands["default"] if c["command"] == "headshot")
    assert headshot["description"] == "Turn a selfie into a professional headshot"

    # Menus that have not changed are not set again.
    before = len(fake.calls_to("setMyCommands"))
    await world.restart()
    assert len(fake.calls_to("setMyCommands")) == before


# ---- the three ways of giving a selfie --------------------------------------------------------


@pytest.mark.parametrize("chat", ["dm", "group"])
async def test_a_photo_with_the_command_as_caption(world: World, chat: str) -> None:
    await world.start()
    fake = world.fake
    chat_id = ALICE if chat == "dm" else GROUP
    world.simulator.config.processing_seconds = 0.4
    sent = fake.send_photo(chat_id, ALICE, selfie_jpeg(), caption="/headshot corporate navy suit")

    result = await result_in(fake, chat_id)
    assert caption_or_text(result).startswith("Done: 1 image · corporate · seed ")
    assert result["reply_to_message"]["message_id"] == sent["message_id"]
    assert result.get("photo"), "sent as a photo"
    assert [label for label, _ in buttons(result)] == ["Re-roll", "Delete"]
    assert all(len(data.encode()) <= 64 for _, data in buttons(result))
    # The status message showed the queue and progress, and was removed once the result came.
    edits = [c.params["text"] for c in fake.calls_to("editMessageText")]
    assert any(t.startswith("Got it: your corporate headshot is queued as job ") for t in edits)
    assert any(t.startswith(("Queued", "Generating")) for t in edits), edits
    assert fake.calls_to("sendChatAction")[0].params["action"] == "upload_photo"
    assert [m for m in fake.bot_messages(chat_id) if caption_or_text(m).startswith("Got it")] == []
    await world.no_deliveries_owed()
    # What the metrics say of it: one update in and acknowledged, one result delivered, and
    # every message the bot sent or edited.
    assert world.app is not None
    scraped = world.app.metrics.exposition(await world.app.figures()).decode()
    for family in ("received_total", "acknowledgement_seconds_count", "delivery_seconds_count"):
        assert f'headshot_chat_{family}{{platform="telegram"}} 1.0' in scraped
    shown = [c for c in fake.calls if sends_a_message(c.method) and c.status == 200]
    sent = f'headshot_chat_messages_sent_total{{platform="telegram"}} {float(len(shown))}'
    assert sent in scraped


@pytest.mark.parametrize("chat", ["dm", "group"])
async def test_the_command_as_a_reply_to_a_photo_then_a_style_from_the_keyboard(
    world: World, chat: str
) -> None:
    await world.start()
    fake = world.fake
    chat_id = ALICE if chat == "dm" else GROUP
    photo = fake.send_photo(chat_id, ALICE, selfie_jpeg())
    command = fake.send_text(chat_id, ALICE, "/headshot", reply_to=photo["message_id"])

    keyboard = await bot_reply_to(fake, chat_id, command["message_id"], "Which style")
    labels = [label for label, _ in buttons(keyboard)]
    assert labels[:2] == ["Corporate", "LinkedIn"] or "Default" in labels
    studio = next(data for label, data in buttons(keyboard) if label.lower() == "studio")
    # Only the asker may pick.
    stranger = fake.press(
        chat_id, BOB if chat == "group" else ALICE, keyboard["message_id"], studio
    )
    if chat == "group":
        answer = await fake.wait_for_answer(stranger)
        assert answer["text"].startswith("Those buttons belong to the person who asked")
        assert results(fake, chat_id) == []
        fake.press(chat_id, ALICE, keyboard["message_id"], studio)

    result = await result_in(fake, chat_id)
    assert caption_or_text(result).startswith("Done: 1 image · studio · seed ")
    assert [label for label, _ in buttons(result)] == ["Re-roll", "Delete"]


@pytest.mark.parametrize("chat", ["dm", "group"])
async def test_the_command_alone_then_the_photo(world: World, chat: str) -> None:
    await world.start()
    fake = world.fake
    chat_id = ALICE if chat == "dm" else GROUP
    command = fake.send_text(chat_id, ALICE, "/headshot@headshot_test_bot outdoor smiling")
    prompt = await bot_reply_to(fake, chat_id, command["message_id"], "Send me your selfie")
    assert "/cancel" in prompt["text"]
    # In a group the bot sees only replies to it: the question makes the person's app reply.
    (asked,) = [c for c in fake.calls_to("sendMessage") if c.params["text"] == prompt["text"]]
    assert bool((asked.params.get("reply_markup") or {}).get("force_reply")) == (chat == "group")
    # A sticker is not a selfie: the bot says so and keeps waiting.
    sticker = fake.send_sticker(chat_id, ALICE, reply_to=prompt["message_id"])
    refusal = await bot_reply_to(fake, chat_id, sticker["message_id"])
    assert refusal["text"] == (
        "A sticker can't be used as a selfie: send a photo (or an image as a file)."
    )
    fake.send_document(
        chat_id,
        ALICE,
        selfie_jpeg(),
        file_name="me.jpg",
        mime_type="image/jpeg",
        reply_to=prompt["message_id"],
    )

    result = await result_in(fake, chat_id)
    assert caption_or_text(result).startswith("Done: 1 image · outdoor · seed ")
    assert await world.rows("jobs") == 1


async def test_a_captionless_photo_in_a_dm_is_a_headshot_request(world: World) -> None:
    await world.start()
    fake = world.fake
    photo = fake.send_photo(ALICE, ALICE, selfie_jpeg())
    keyboard = await bot_reply_to(fake, ALICE, photo["message_id"], "Which style")
    default = next(data for label, data in buttons(keyboard) if label == "Default")
    fake.press(ALICE, ALICE, keyboard["message_id"], default)
    result = await result_in(fake, ALICE)
    assert caption_or_text(result).startswith("Done: 1 image · corporate · seed ")  # the default


async def test_waiting_for_a_photo_ends_with_cancel_or_after_a_while(world: World) -> None:
    await world.start(telegram_wait_seconds=1)
    fake = world.fake
    command = fake.send_text(ALICE, ALICE, "/headshot")
    await bot_reply_to(fake, ALICE, command["message_id"], "Send me your selfie")
    cancel = fake.send_text(ALICE, ALICE, "/cancel")
    assert (await bot_reply_to(fake, ALICE, cancel["message_id"]))["text"] == (
        "Cancelled: nothing was charged."
    )
    photo = fake.send_photo(ALICE, ALICE, selfie_jpeg())  # no longer awaited: a new request
    await bot_reply_to(fake, ALICE, photo["message_id"], "Which style")

    command = fake.send_text(ALICE, ALICE, "/headshot")
    prompt = await bot_reply_to(fake, ALICE, command["message_id"], "Send me your selfie")
    await fake.wait_for(
        lambda: (
            (fake.message(ALICE, prompt["message_id"]) or {})
            .get("text", "")
            .startswith("No photo came")
        ),
        timeout=10,
    )
    assert await world.rows("jobs") == 0


async def test_results_as_documents_when_configured(world: World) -> None:
    await world.start(telegram_send_as="document")
    fake = world.fake
    fake.send_photo(ALICE, ALICE, selfie_jpeg(), caption="/headshot studio")
    result = await result_in(fake, ALICE)
    assert result.get("document") and not result.get("photo")
    data = fake.file_bytes(result["document"]["file_id"])
    with Image.open(io.BytesIO(data)) as image:
        assert image.size[0] > 0


async def test_two_samples_arrive_as_an_album_then_the_buttons(world: World) -> None:
    await world.start()
    fake = world.fake
    fake.send_photo(ALICE, ALICE, selfie_jpeg(), caption="/headshot studio samples=2")
    result = await result_in(fake, ALICE)
    assert caption_or_text(result).startswith("Done: 2 images · studio")
    album = fake.calls_to("sendMediaGroup")
    assert len(album) == 1 and len(album[0].params["media"]) == 2
    assert result["reply_to_message"].get("media_group_id")


async def test_an_image_over_telegrams_photo_limit_goes_as_a_file() -> None:
    big = b"\x89PNG" + bytes(PHOTO_LIMIT)
    ref = ImageRef("http://x/1.png", "k", "image/png", 10, 10)

    async def read(_: ImageRef) -> bytes:
        return big

    (upload,) = await uploads([ref], read, name="0123456789abcdef", as_photo=True)
    assert not upload.as_photo and upload.filename == "01234567-1.png"


# ---- buttons ------------------------------------------------------------------------------------


async def test_reroll_and_delete_and_forged_presses(world: World) -> None:
    await world.start()
    fake = world.fake
    fake.send_photo(GROUP, ALICE, selfie_jpeg(), caption="/headshot casual")
    first = await result_in(fake, GROUP)
    reroll = dict(buttons(first))["Re-roll"]
    delete = dict(buttons(first))["Delete"]

    # A stranger's presses are refused to them alone and change nothing.
    answer = await fake.wait_for_answer(fake.press(GROUP, BOB, first["message_id"], delete))
    assert answer["show_alert"] and answer["text"].startswith("No job of yours matches")
    answer = await fake.wait_for_answer(fake.press(GROUP, BOB, first["message_id"], reroll))
    assert answer["text"].startswith("No job of yours matches")
    # Forged data: a command on someone else's job, and data that is not a command of ours.
    bob_photo = fake.send_photo(GROUP, BOB, selfie_jpeg(), caption="/headshot studio")
    bobs = await result_in(fake, GROUP, 2)
    assert bobs["reply_to_message"]["message_id"] == bob_photo["message_id"]
    forged = f"hs:delete job={job_of(first)}"
    answer = await fake.wait_for_answer(
        fake.press(GROUP, BOB, bobs["message_id"], forged, forged=True)
    )
    assert answer["text"].startswith("No job of yours matches")
    answer = await fake.wait_for_answer(
        fake.press(GROUP, BOB, bobs["message_id"], "hs:rm -rf", forged=True)
    )
    assert answer["text"] == "That button isn't valid: type /help to see the commands."
    answer = await fake.wait_for_answer(
        fake.press(GROUP, BOB, bobs["message_id"], "x" * 10, forged=True)
    )
    assert answer["text"] == "That button isn't valid: type /help to see the commands."
    assert await world.rows("jobs", "deleted_at IS NULL") == 2

    fake.press(GROUP, ALICE, first["message_id"], reroll)
    again = await result_in(fake, GROUP, 3)
    assert caption_or_text(again).startswith("Done: 1 image · casual · seed ")
    assert again["reply_to_message"]["message_id"] == first["reply_to_message"]["message_id"]

    answer = await fake.wait_for_answer(fake.press(GROUP, ALICE, first["message_id"], delete))
    assert answer["text"].startswith("Deleted job ")
    assert (GROUP, first["message_id"]) in fake.deleted
    assert await world.rows("jobs", "deleted_at IS NULL") == 2


async def test_a_failed_job_offers_to_try_again(world: World) -> None:
    await world.start()
    fake = world.fake
    world.simulator.config.failure_rate = 1.0
    sent = fake.send_photo(GROUP, ALICE, selfie_jpeg(), caption="/headshot studio")
    failed = await bot_reply_to(fake, GROUP, sent["message_id"], "Sorry, that didn't work:")
    assert "Your credits were returned." in failed["text"]
    assert [label for label, _ in buttons(failed)] == ["Try again"]

    world.simulator.config.failure_rate = 0.0
    fake.press(GROUP, ALICE, failed["message_id"], buttons(failed)[0][1])
    result = await result_in(fake, GROUP)
    assert result["reply_to_message"]["message_id"] == sent["message_id"]


async def test_history_in_a_private_chat_turns_its_pages(world: World) -> None:
    await world.start(daily_quota=20, max_active_per_user=10)
    fake = world.fake
    for count in range(1, 7):
        fake.send_photo(ALICE, ALICE, selfie_jpeg(), caption="/headshot studio")
        await result_in(fake, ALICE, count)
    asked = fake.send_text(ALICE, ALICE, "/history")
    page = await fake.wait_for(
        lambda: next(
            (m for m in fake.bot_messages(ALICE) if m.get("text", "").startswith("Your jobs")),
            None,
        )
    )
    assert page["text"].startswith("Your jobs, newest first (page 1 of 2):")
    assert page["reply_to_message"]["media_group_id"]  # the page's images, as an album before it
    album = fake.calls_to("sendMediaGroup")[-1]
    assert len(album.params["media"]) == 5
    assert album.params["reply_parameters"]["message_id"] == asked["message_id"]

    fake.press(ALICE, ALICE, page["message_id"], dict(buttons(page))["Next"])
    turned = await fake.wait_for(
        lambda: next(
            (
                m
                for m in fake.bot_messages(ALICE)
                if caption_or_text(m).startswith("Your jobs, newest first (page 2")
            ),
            None,
        )
    )
    assert [label for label, _ in buttons(turned)] == ["Previous"]
    assert turned.get("photo")  # one image: the page is its caption
    assert fake.message(ALICE, page["message_id"]) is None  # the old page went


# ---- refusals ------------------------------------------------------------------------------------


async def test_a_pdf_is_refused_and_reserves_nothing(world: World) -> None:
    await world.start()
    fake = world.fake
    sent = fake.send_document(
        ALICE,
        ALICE,
        b"%PDF-1.7\n",
        file_name="cv.pdf",
        mime_type="application/pdf",
        caption="/headshot studio",
    )
    refusal = await bot_reply_to(fake, ALICE, sent["message_id"])
    assert refusal["text"].startswith("That file isn't an image")
    await assert_nothing_reserved(world)


async def test_a_sticker_given_as_the_photo_is_refused(world: World) -> None:
    await world.start()
    fake = world.fake
    sticker = fake.send_sticker(GROUP, ALICE)
    command = fake.send_text(GROUP, ALICE, "/headshot studio", reply_to=sticker["message_id"])
    refusal = await bot_reply_to(fake, GROUP, command["message_id"])
    assert refusal["text"].startswith("A sticker can't be used as a selfie")
    await assert_nothing_reserved(world)


async def test_a_25_mb_file_is_refused_before_it_is_downloaded(world: World) -> None:
    await world.start()
    fake = world.fake
    sent = fake.send_document(
        ALICE,
        ALICE,
        selfie_jpeg(),
        file_name="huge.jpg",
        mime_type="image/jpeg",
        caption="/headshot studio",
        size=25 * 1024 * 1024,
    )
    refusal = await bot_reply_to(fake, ALICE, sent["message_id"])
    assert "too large" in refusal["text"], refusal["text"]
    assert fake.calls_to("getFile") == []
    await assert_nothing_reserved(world)


async def test_someone_elses_photo_is_refused(world: World) -> None:
    await world.start()
    fake = world.fake
    photo = fake.send_photo(GROUP, BOB, selfie_jpeg())
    command = fake.send_text(GROUP, ALICE, "/headshot studio", reply_to=photo["message_id"])
    refusal = await bot_reply_to(fake, GROUP, command["message_id"])
    assert refusal["text"].startswith("Reply to a photo you sent yourself")
    await assert_nothing_reserved(world)


async def test_a_banned_word_is_refused(world: World) -> None:
    await world.start()
    fake = world.fake
    fake.started.add(MOD)
    fake.send_text(GROUP, MOD, "/admin banned-words add balloon")
    await fake.wait_for(lambda: bool(fake.bot_messages(MOD)))
    sent = fake.send_photo(GROUP, ALICE, selfie_jpeg(), caption="/headshot studio a red balloon")
    refusal = await bot_reply_to(fake, GROUP, sent["message_id"], "Your prompt")
    assert refusal["text"].startswith("Your prompt contains “balloon”, which isn't allowed here")
    await assert_nothing_reserved(world)


async def test_an_exhausted_quota_is_refused(world: World) -> None:
    await world.start(daily_quota=0)
    fake = world.fake
    sent = fake.send_photo(ALICE, ALICE, selfie_jpeg(), caption="/headshot studio")
    refusal = await bot_reply_to(fake, ALICE, sent["message_id"], "You have no credits left")
    assert buttons(refusal) == []
    await assert_nothing_reserved(world)


async def test_a_banned_user_is_refused(world: World) -> None:
    await world.start()
    fake = world.fake
    fake.started.add(MOD)
    ban = fake.send_text(GROUP, MOD, f"/admin ban {BOB} spam")
    await bot_reply_to(fake, GROUP, ban["message_id"], "Sent to you in a private chat")
    assert any(m["text"] == f"User {BOB} is now banned here." for m in fake.bot_messages(MOD))
    sent = fake.send_photo(GROUP, BOB, selfie_jpeg(), caption="/headshot studio")
    refusal = await bot_reply_to(fake, GROUP, sent["message_id"], "You can't use this bot here")
    assert refusal["text"].startswith("You can't use this bot here (spam).")
    assert await world.rows("jobs") == 0 and await world.rows("credit_ledger") == 0


# ---- moderation ----------------------------------------------------------------------------------


async def test_group_admin_commands(world: World) -> None:
    await world.start()
    fake = world.fake
    fake.started.add(MOD)

    # An admin: answered privately; pointing at someone by replying to their message.
    bobs = fake.send_text(GROUP, BOB, "hello")
    grant = fake.send_text(GROUP, MOD, "/admin grant 2", reply_to=bobs["message_id"])
    await bot_reply_to(fake, GROUP, grant["message_id"], "Sent to you in a private chat")
    assert fake.bot_messages(MOD)[-1]["text"] == f"Gave user {BOB} 2 credits; they don't expire."

    # An anonymous admin speaks as the group: answered in the group.
    quota = fake.send_text(GROUP, MOD, "/admin quota set everyone 3", anonymous_admin=True)
    answer = await bot_reply_to(fake, GROUP, quota["message_id"])
    assert answer["text"] == "Daily allowance for everyone here: 3 images per day."

    # A member is refused, and nothing is written.
    audits = await world.rows("audit_log")
    refused = fake.send_text(GROUP, ALICE, "/admin ban 502")
    answer = await bot_reply_to(fake, GROUP, refused["message_id"])
    assert answer["text"] == "Only this community's moderators can use /admin commands."
    assert await world.rows("audit_log") == audits == 2
    assert await world.rows("bans") == 0

    # A group admin who is demoted loses the commands at once (asked of Telegram every time).
    fake.set_status(GROUP, MOD, "member")
    demoted = fake.send_text(GROUP, MOD, "/admin stats")
    answer = await bot_reply_to(fake, GROUP, demoted["message_id"])
    assert answer["text"] == "Only this community's moderators can use /admin commands."


async def test_an_anonymous_admins_job_is_theirs_to_reroll_and_delete(world: World) -> None:
    await world.start()
    fake = world.fake
    sent = fake.send_photo(
        GROUP, MOD, selfie_jpeg(), caption="/headshot executive", anonymous_admin=True
    )
    result = await result_in(fake, GROUP)
    assert result["reply_to_message"]["message_id"] == sent["message_id"]
    choices = dict(buttons(result))
    # A member cannot act for the group's admins; an admin's press (their own account) can.
    answer = await fake.wait_for_answer(
        fake.press(GROUP, ALICE, result["message_id"], choices["Re-roll"])
    )
    assert answer["text"].startswith("No job of yours matches")
    fake.press(GROUP, MOD, result["message_id"], choices["Re-roll"])
    again = await result_in(fake, GROUP, 2)
    assert caption_or_text(again).startswith("Done: 1 image · executive · seed ")
    answer = await fake.wait_for_answer(
        fake.press(GROUP, MOD, result["message_id"], choices["Delete"])
    )
    assert answer["text"].startswith("Deleted job ")
    assert (GROUP, result["message_id"]) in fake.deleted


async def test_a_status_message_that_cannot_be_edited_loses_nothing(world: World) -> None:
    await world.start()
    fake = world.fake
    fake.flood["editMessageText"] = 20  # more than the rate limiter's retries
    fake.send_photo(ALICE, ALICE, selfie_jpeg(), caption="/headshot studio")
    result = await result_in(fake, ALICE)
    assert caption_or_text(result).startswith("Done: 1 image · studio")
    await world.no_deliveries_owed()
    assert not any("Something went wrong" in caption_or_text(m) for m in fake.bot_messages(ALICE))


async def test_an_owner_who_never_opened_a_chat_does_not_stop_the_bot(world: World) -> None:
    await world.start(owner_ids="telegram:777777")
    fake = world.fake
    refused = [c for c in fake.calls if c.params.get("scope", {}).get("chat_id") == 777777]
    assert refused and all(c.status == 400 for c in refused)
    asked = fake.send_text(ALICE, ALICE, "/styles")
    assert (await bot_reply_to(fake, ALICE, asked["message_id"]))["text"].startswith("Styles")


async def test_unknown_commands_in_a_group_are_left_to_other_bots(world: World) -> None:
    await world.start()
    fake = world.fake
    fake.send_text(GROUP, ALICE, "/weather paris")
    mine = fake.send_text(GROUP, ALICE, "/weather@headshot_test_bot paris")
    answer = await bot_reply_to(fake, GROUP, mine["message_id"])
    assert answer["text"].startswith("Unknown command /weather")
    assert len(fake.bot_messages(GROUP)) == 1


async def test_admin_in_a_dm_is_for_owners_only(world: World) -> None:
    await world.start()
    fake = world.fake
    mine = fake.send_text(OWNER, OWNER, "/admin quota set everyone 7")
    answer = await bot_reply_to(fake, OWNER, mine["message_id"])
    assert answer["text"] == "Daily allowance for everyone everywhere (global): 7 images per day."
    theirs = fake.send_text(MOD, MOD, "/admin stats")
    answer = await bot_reply_to(fake, MOD, theirs["message_id"])
    assert answer["text"].startswith("Admin commands work in a server or group")


async def test_admin_stats_is_a_chart_with_the_text_as_its_caption(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await world.start()
    fake = world.fake
    fake.send_photo(ALICE, ALICE, selfie_jpeg(), caption="/headshot studio")
    await result_in(fake, ALICE)
    asked = fake.send_text(OWNER, OWNER, "/admin stats 30")
    answer = await bot_reply_to(fake, OWNER, asked["message_id"])
    assert answer["caption"].startswith("Last 30 days everywhere (global): 1 job, 1 succeeded")
    assert "text" not in answer
    chart = fake.file_bytes(answer["photo"][-1]["file_id"])  # the largest size: the original
    with Image.open(io.BytesIO(chart)) as picture:
        assert (picture.format, picture.size) == ("PNG", (1000, 750))

    # A text longer than a caption may be is cut to Telegram's 1,024 characters.
    stats = replies.stats

    def long_stats(*args: Any, **kwargs: Any) -> replies.Reply:
        reply = stats(*args, **kwargs)
        return dataclasses.replace(reply, text=reply.text + "\n" + "й" * 2000)

    monkeypatch.setattr(replies, "stats", long_stats)
    asked = fake.send_text(OWNER, OWNER, "/admin stats")
    answer = await bot_reply_to(fake, OWNER, asked["message_id"], "Last 7 days")
    assert len(answer["caption"]) == 1024 and answer["caption"].endswith("й…")
    assert answer["photo"] and "text" not in answer


async def test_private_answers_asked_in_a_group_need_a_private_chat(world: World) -> None:
    await world.start()
    fake = world.fake
    asked = fake.send_text(GROUP, BOB, "/quota")
    answer = await bot_reply_to(fake, GROUP, asked["message_id"])
    assert answer["text"].startswith("That answer is only for you, and I can't message you yet")
    assert fake.bot_messages(BOB) == []


# ---- webhook mode ------------------------------------------------------------------------------


async def test_webhook_mode_checks_telegrams_secret(world: World) -> None:
    port = free_port()
    await world.start(web_port=port, public_base_url=f"http://127.0.0.1:{port}")
    fake = world.fake
    assert fake.webhook is not None
    assert fake.webhook["url"] == f"http://127.0.0.1:{port}/webhooks/telegram"
    assert world.adapter is not None
    secret = fake.webhook["secret_token"]
    assert secret == world.adapter.webhook_secret and len(secret) >= 32
    assert fake.calls_to("getUpdates") == []
    fake.started.add(BOB)

    # Posted by Telegram with the secret: processed.
    fake.send_photo(ALICE, ALICE, selfie_jpeg(), caption="/headshot studio")
    await result_in(fake, ALICE)
    assert all(status == 200 for _, status in fake.webhook_deliveries)

    # A wrong or missing secret: 403, and nothing happens.
    update = {
        "update_id": 999_001,
        "message": {
            "message_id": 77,
            "date": 1_700_000_000,
            "chat": {"id": BOB, "type": "private", "first_name": "Bob"},
            "from": {"id": BOB, "is_bot": False, "first_name": "Bob"},
            "text": "/styles",
            "entities": [{"type": "bot_command", "offset": 0, "length": 7}],
        },
    }
    assert await fake.post_webhook(update, secret="not-the-secret") == 403
    assert await fake.post_webhook(update, secret=None) == 403
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/webhooks/telegram"
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret}
        async with session.post(url, data=b"[1, 2]", headers=headers) as response:
            assert response.status == 400
    await asyncio.sleep(0.3)
    assert fake.bot_messages(BOB) == []
    assert await fake.post_webhook(update, secret=secret) == 200
    await fake.wait_for(lambda: bool(fake.bot_messages(BOB)))
    assert fake.bot_messages(BOB)[0]["text"].startswith("Styles")

    # Not receiving (stopping, or not started yet): 503, so that Telegram, or the load balancer
    # in front of several replicas, sends it again; never a 404, which refuses it.
    await world.adapter.stop()
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}/webhooks/telegram"
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret}
        async with session.post(
            url, json={**update, "update_id": 999_002}, headers=headers
        ) as answer:
            assert answer.status == 503
            assert answer.headers["Retry-After"] == "1"
        async with session.post(f"http://127.0.0.1:{port}/webhooks/nowhere", json={}) as answer:
            assert answer.status == 404


# ---- restarts, flood control, secrets, launcher --------------------------------------------------


async def test_a_restart_mid_job_still_delivers(world: World) -> None:
    await world.start()
    fake = world.fake
    world.simulator.config.processing_seconds = 1.5
    sent = fake.send_photo(GROUP, ALICE, selfie_jpeg(), caption="/headshot studio")
    status = await bot_reply_to(fake, GROUP, sent["message_id"], "")
    await fake.wait_for(
        lambda: caption_or_text(fake.message(GROUP, status["message_id"]) or {}).startswith(
            ("Queued", "Generating")
        )
    )
    await world.restart()

    result = await result_in(fake, GROUP)
    assert caption_or_text(result).startswith("Done: 1 image · studio · seed ")
    assert result["reply_to_message"]["message_id"] == sent["message_id"]
    await world.no_deliveries_owed()
    assert fake.message(GROUP, status["message_id"]) is None  # the status message went


async def test_flood_control_is_waited_out(world: World) -> None:
    await world.start()
    fake = world.fake
    fake.flood["sendPhoto"] = 1
    fake.send_photo(ALICE, ALICE, selfie_jpeg(), caption="/headshot studio")
    await result_in(fake, ALICE)
    assert [c.status for c in fake.calls_to("sendPhoto")] == [429, 200]


@pytest.mark.parametrize("log_format", ["plain", "json"])
async def test_the_token_reaches_no_log_and_no_database(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture, log_format: LogFormat
) -> None:
    # What `headshot-bot run` sets up.
    with service_logging("DEBUG", [world.fake.token], log_format=log_format) as written:
        logging.getLogger().addHandler(caplog.handler)
        await world.start()
        world.fake.send_photo(ALICE, ALICE, selfie_jpeg(), caption="/headshot studio")
        await result_in(world.fake, ALICE)
    database = stored_bytes(world.database_url)
    token = world.fake.token
    assert token.encode() not in database
    assert token not in caplog.text and token.split(":")[1] not in caplog.text
    assert "DEBUG" in caplog.text
    for secret in (token, token.split(":")[1]):
        assert_secret_absent(written.getvalue(), secret, json_format=log_format == "json")
    if log_format == "json":
        driven = [e for e in json_lines(written.getvalue()) if "operation" in e]
        assert driven and all(e["platform"] == "telegram" for e in driven)


async def test_a_refused_token_is_one_clear_error(world: World) -> None:
    with pytest.raises(ConfigError, match="invalid setting TELEGRAM_BOT_TOKEN: Telegram refused"):
        await world.start(telegram_bot_token="111:wrong")


async def test_run_starts_the_telegram_adapter_when_a_token_is_set(
    fake: FakeTelegram, tmp_path: Path, database_url: str
) -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSLAB_", "TELEGRAM_"))}
    env = {
        **clean,
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url,
        "IMAGE_STORE_SHARED": "1",
        "WEB_PORT": "0",
        "TELEGRAM_BOT_TOKEN": fake.token,
        "TELEGRAM_API_BASE": fake.api_base,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "run",
        "--demo",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await fake.wait_for_call("getUpdates", timeout=30)
        asked = fake.send_text(ALICE, ALICE, "/styles")
        answer = await bot_reply_to(fake, ALICE, asked["message_id"])
        assert answer["text"].startswith("Styles")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    assert "connected to Telegram" in stderr.decode()
    assert fake.token not in stderr.decode()


def test_progress_edits_share_a_budget_per_second() -> None:
    budget = EditBudget(per_second=5)
    assert [budget.take() for _ in range(6)] == [True] * 5 + [False]


async def test_only_one_replica_long_polls_telegram(
    tmp_path: Path, fake: FakeTelegram, simulator: Simulator, postgres_url: str
) -> None:
    """Telegram hands each update to one poller: a second replica polling beside the first is
    refused with one line; once the first is gone, the next one polls."""
    shared = {"pseudonym_key": "c3" * 32}
    first = World(tmp_path / "first", fake, simulator, postgres_url)
    second = World(tmp_path / "second", fake, simulator, postgres_url)
    try:
        await first.start(**shared)
        with pytest.raises(ConfigError) as refused:
            await second.start(**shared)
        assert str(refused.value) == (
            "invalid setting PUBLIC_BASE_URL: another replica already long-polls Telegram on "
            "this database; set PUBLIC_BASE_URL (webhook mode) to run several replicas"
        )
        await second.stop()
        await first.stop()
        await second.start(**shared)
        asked = fake.send_text(ALICE, ALICE, "/styles")
        answer = await bot_reply_to(fake, ALICE, asked["message_id"])
        assert answer["text"].startswith("Styles")
    finally:
        await second.stop()
        await first.stop()
