"""The fake Telegram against the real python-telegram-bot: a plain `telegram.Bot`, and once an
`Application` polling with a handler."""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image
from telegram import (
    Bot,
    BotCommand,
    BotCommandScopeChat,
    ChatMemberAdministrator,
    ChatMemberLeft,
    ChatMemberMember,
    ChatMemberOwner,
    InlineKeyboardButton,
    InlineKeyboardMarkup,
    InputMediaPhoto,
    Update,
)
from telegram.constants import ParseMode
from telegram.error import BadRequest, Conflict, Forbidden, InvalidToken, RetryAfter
from telegram.ext import Application, ApplicationBuilder, CommandHandler, ContextTypes

from tests.fake_telegram import GROUP_ANONYMOUS_BOT_ID, FakeTelegram

USER = 4242
OTHER = 4343
OWNER, ADMIN, MEMBER, STRANGER = 5001, 5002, 5003, 5004
GROUP = -1001234


def image(size: tuple[int, int] = (640, 480), color: str = "tan", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTelegram]:
    async with FakeTelegram() as fake:
        fake.add_user(USER, "Ada", "ada")
        fake.add_user(OTHER, "Bob")
        fake.add_group(GROUP, "Headshots", owner=OWNER, admins=[ADMIN], members=[MEMBER])
        yield fake


@pytest.fixture
async def bot(fake: FakeTelegram) -> AsyncIterator[Bot]:
    urls = {"base_url": f"{fake.api_base}/bot", "base_file_url": f"{fake.api_base}/file/bot"}
    async with Bot(fake.token, **urls) as bot:
        yield bot


async def next_update(bot: Bot) -> Update:
    """The next update, confirmed so that the following call gets the one after."""
    updates = await bot.get_updates(timeout=5)
    assert len(updates) == 1, updates
    await bot.get_updates(offset=updates[0].update_id + 1, timeout=0)
    return updates[0]


async def test_get_me_and_routing(fake: FakeTelegram, bot: Bot) -> None:
    me = await bot.get_me()
    assert (me.id, me.username, me.is_bot) == (fake.bot_id, fake.bot_username, True)
    assert me.can_read_all_group_messages is False and me.supports_inline_queries is False
    assert fake.calls_to("getMe")[0].status == 200

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{fake.api_base}/bot{fake.token}/GETME") as response:
            assert response.status == 200 and (await response.json())["ok"] is True
        async with http.post(f"{fake.api_base}/bot{fake.token}/sendSticker") as response:
            body = await response.json()
            assert (response.status, body["description"]) == (404, "Not Found")
    assert fake.calls[-1].method == "sendSticker"

    wrong = Bot("999:wrong", base_url=f"{fake.api_base}/bot")
    with pytest.raises(InvalidToken):
        await wrong.get_me()
    assert fake.calls[-1].status == 401


async def test_a_users_photo_downloads_through_get_file(fake: FakeTelegram, bot: Bot) -> None:
    data = image((800, 600))
    sent = fake.send_photo(USER, USER, data, caption="me /headshot")
    update = await next_update(bot)
    assert update.message is not None and update.message.message_id == sent["message_id"]
    photo = update.message.photo
    assert len(photo) >= 2 and photo[0].width == 90
    assert (photo[-1].width, photo[-1].height) == (800, 600)
    assert update.message.caption_entities[0].type == "bot_command"
    file = await bot.get_file(photo[-1].file_id)
    assert bytes(await file.download_as_bytearray()) == data
    buffer = io.BytesIO()
    await (await bot.get_file(photo[0].file_id)).download_to_memory(buffer)
    assert Image.open(buffer).size == (90, 68)


async def test_uploads_round_trip(fake: FakeTelegram, bot: Bot) -> None:
    fake.send_text(USER, USER, "/start")
    data, other = image(), image((300, 200), "navy", "JPEG")

    photo = await bot.send_photo(USER, data, caption="<b>Your</b> headshot", parse_mode="HTML")
    assert fake.file_bytes(photo.photo[-1].file_id) == data
    assert photo.caption == "Your headshot" and photo.caption_entities[0].type == "bold"

    document = await bot.send_document(USER, b"%PDF-1.4 receipt", filename="receipt.pdf")
    assert document.document is not None
    assert (document.document.file_name, document.document.mime_type) == (
        "receipt.pdf",
        "application/pdf",
    )
    assert fake.file_bytes(document.document.file_id) == b"%PDF-1.4 receipt"

    album = await bot.send_media_group(USER, [InputMediaPhoto(data), InputMediaPhoto(other)])
    assert len(album) == 2 and album[0].media_group_id == album[1].media_group_id is not None
    assert [fake.file_bytes(m.photo[-1].file_id) for m in album] == [data, other]
    assert fake.calls_to("sendMediaGroup")[0].params["media"][1]["media"] == other
    assert len(fake.bot_messages(USER)) == 4

    with pytest.raises(BadRequest, match="Image_process_failed"):
        await bot.send_photo(USER, b"not an image")
    with pytest.raises(BadRequest, match="Photo_invalid_dimensions"):
        await bot.send_photo(USER, image((4000, 100)))


async def test_edits_and_their_errors(fake: FakeTelegram, bot: Bot) -> None:
    asked = fake.send_text(USER, USER, "hello")
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Go", callback_data="go")]])
    sent = await bot.send_message(
        USER, "Pick a style", reply_markup=keyboard, reply_to_message_id=asked["message_id"]
    )
    stored = fake.message(USER, sent.message_id)
    assert stored is not None and stored["reply_to_message"]["text"] == "hello"
    assert stored["reply_markup"]["inline_keyboard"][0][0]["callback_data"] == "go"

    await bot.edit_message_text("Working…", USER, sent.message_id, reply_markup=keyboard)
    with pytest.raises(BadRequest, match="Message is not modified"):
        await bot.edit_message_text("Working…", USER, sent.message_id, reply_markup=keyboard)
    await bot.edit_message_text("Done", USER, sent.message_id)  # no markup: keyboard removed
    stored = fake.message(USER, sent.message_id)
    assert stored is not None and stored["text"] == "Done" and "reply_markup" not in stored
    with pytest.raises(AssertionError, match="no button"):
        fake.press(USER, USER, sent.message_id, "go")

    with pytest.raises(BadRequest, match="Message to edit not found"):
        await bot.edit_message_text("x", USER, 999)
    with pytest.raises(BadRequest, match="There is no caption in the message to edit"):
        await bot.edit_message_caption(USER, sent.message_id, caption="x")
    with pytest.raises(BadRequest, match="Message text is empty"):
        await bot.send_message(USER, "")
    with pytest.raises(BadRequest, match="Message is too long"):
        await bot.send_message(USER, "x" * 4097)
    with pytest.raises(BadRequest, match="Message to be replied not found"):
        await bot.send_message(USER, "x", reply_to_message_id=999)
    lenient = await bot.send_message(
        USER, "x", reply_to_message_id=999, allow_sending_without_reply=True
    )
    assert lenient.reply_to_message is None
    with pytest.raises(BadRequest, match="Button_data_invalid"):
        too_long = InlineKeyboardButton("x", callback_data="x" * 65)
        await bot.send_message(USER, "x", reply_markup=InlineKeyboardMarkup([[too_long]]))
    with pytest.raises(BadRequest, match="Can't parse entities"):
        await bot.send_message(USER, "<b>unclosed", parse_mode=ParseMode.HTML)

    await bot.delete_message(USER, sent.message_id)
    assert fake.deleted == [(USER, sent.message_id)] and fake.message(USER, sent.message_id) is None
    with pytest.raises(BadRequest, match="Message to delete not found"):
        await bot.delete_message(USER, sent.message_id)


async def test_get_file_refuses_files_over_20_mb(fake: FakeTelegram, bot: Bot) -> None:
    big = fake.add_file(b"tiny", size=25 * 1024 * 1024)
    with pytest.raises(BadRequest, match="File is too big"):
        await bot.get_file(big["file_id"])
    small = fake.add_file(b"tiny")
    assert (await bot.get_file(small["file_id"])).file_size == 4


async def test_a_press_arrives_with_the_message_and_its_reply(fake: FakeTelegram, bot: Bot) -> None:
    asked = fake.send_text(GROUP, MEMBER, "/headshot@headshot_test_bot")
    await next_update(bot)
    keyboard = InlineKeyboardMarkup([[InlineKeyboardButton("Studio", callback_data="s:1")]])
    sent = await bot.send_message(
        GROUP, "Style?", reply_markup=keyboard, reply_to_message_id=asked["message_id"]
    )
    query_id = fake.press(GROUP, MEMBER, sent.message_id, "s:1")
    query = (await next_update(bot)).callback_query
    assert query is not None and query.id == query_id and query.data == "s:1"
    assert query.from_user.id == MEMBER and query.chat_instance
    assert query.message is not None and query.message.message_id == sent.message_id
    assert query.message.reply_to_message.text == "/headshot@headshot_test_bot"  # type: ignore[union-attr]

    assert await query.answer("Queued")
    assert fake.answers[query_id]["text"] == "Queued"
    with pytest.raises(BadRequest, match="Query is too old"):
        await query.answer()
    with pytest.raises(AssertionError):
        fake.press(GROUP, MEMBER, 999, "s:1")


async def test_commands_are_stored_by_scope(fake: FakeTelegram, bot: Bot) -> None:
    commands = [BotCommand("headshot", "Make a headshot"), BotCommand("help", "How it works")]
    assert await bot.set_my_commands(commands, scope=BotCommandScopeChat(GROUP))
    assert fake.commands[f"chat:{GROUP}"][0] == {
        "command": "headshot",
        "description": "Make a headshot",
    }
    assert await bot.get_my_commands(scope=BotCommandScopeChat(GROUP)) == tuple(commands)
    assert await bot.get_my_commands() == ()
    assert fake.calls_to("setMyCommands")[0].params["scope"] == {"type": "chat", "chat_id": GROUP}
    with pytest.raises(BadRequest, match="Bot_command_invalid"):
        await bot.set_my_commands([BotCommand("Head-Shot", "bad name")])
    with pytest.raises(BadRequest, match="Bot_command_description_invalid"):
        await bot.set_my_commands([BotCommand("ok", "")])
    assert await bot.delete_my_commands(scope=BotCommandScopeChat(GROUP))
    assert fake.commands == {}


async def test_a_long_poll_answers_when_an_update_comes(fake: FakeTelegram, bot: Bot) -> None:
    poll = asyncio.create_task(bot.get_updates(timeout=5))
    await fake.wait_for_call("getUpdates")
    began = time.monotonic()
    fake.send_text(USER, USER, "hi")
    updates = await poll
    assert time.monotonic() - began < 2
    assert [u.message.text for u in updates if u.message] == ["hi"]
    again = await bot.get_updates(offset=updates[0].update_id, timeout=0)  # not yet confirmed
    assert [u.update_id for u in again] == [updates[0].update_id]
    assert await bot.get_updates(offset=updates[0].update_id + 1, timeout=0) == ()


async def test_privacy_mode_in_groups(fake: FakeTelegram, bot: Bot) -> None:
    fake.send_photo(GROUP, MEMBER, image())  # not for the bot: stored, not delivered
    mine = await bot.send_message(GROUP, "Send me a selfie as a reply")
    fake.send_photo(GROUP, MEMBER, image(), reply_to=mine.message_id)
    fake.send_text(GROUP, MEMBER, "/help@some_other_bot")
    update = await next_update(bot)
    assert update.message is not None and update.message.photo
    assert len(fake.messages(GROUP)) == 4
    fake.set_status(GROUP, fake.bot_id, "administrator")  # admins see everything
    fake.send_sticker(GROUP, MEMBER)
    sticker = (await next_update(bot)).message.sticker  # type: ignore[union-attr]
    assert sticker is not None and (sticker.width, sticker.type) == (512, "regular")


async def test_webhook_with_a_secret(fake: FakeTelegram, bot: Bot) -> None:
    received: list[tuple[str | None, dict[str, Any]]] = []

    async def receive(request: web.Request) -> web.Response:
        secret = request.headers.get("X-Telegram-Bot-Api-Secret-Token")
        received.append((secret, await request.json()))
        return web.Response(status=200 if secret == "s3cr3t_-x" else 403)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        with pytest.raises(BadRequest, match="Secret token contains unallowed characters"):
            await bot.set_webhook(url, secret_token="not/allowed")
        assert await bot.set_webhook(url, secret_token="s3cr3t_-x")
        assert fake.webhook == {"url": url, "secret_token": "s3cr3t_-x", "allowed_updates": None}
        fake.send_text(USER, USER, "via webhook")
        await fake.wait_for(lambda: fake.webhook_deliveries)
        assert fake.webhook_deliveries == [(received[0][1]["update_id"], 200)]
        assert received[0][0] == "s3cr3t_-x"
        assert received[0][1]["message"]["text"] == "via webhook"
        assert (await bot.get_webhook_info()).pending_update_count == 0

        assert await fake.post_webhook({"message": received[0][1]["message"]}, secret="no") == 403
        assert await fake.post_webhook({"message": received[0][1]["message"]}, secret=None) == 403
        with pytest.raises(Conflict, match="webhook is active"):
            await bot.get_updates()
        assert await bot.delete_webhook()
        assert fake.webhook is None and await bot.get_updates(timeout=0) == ()
    finally:
        await runner.cleanup()


async def test_webhook_connections_post_at_once_but_one_chat_in_order(
    fake: FakeTelegram, bot: Bot
) -> None:
    """With several webhook connections (setWebhook's max_connections), updates of different
    chats are POSTed at once; one chat's still wait for each other, in order."""
    in_flight: list[int] = []
    peak = 0
    order: list[tuple[int, str]] = []
    release = asyncio.Event()

    async def receive(request: web.Request) -> web.Response:
        nonlocal peak
        update = await request.json()
        chat = update["message"]["chat"]["id"]
        assert chat not in in_flight, "two updates of one chat at once"
        in_flight.append(chat)
        peak = max(peak, len(in_flight))
        if len(in_flight) == 2:
            release.set()
        await release.wait()
        order.append((chat, update["message"]["text"]))
        in_flight.remove(chat)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    fake.webhook_connections = 4
    try:
        assert await bot.set_webhook(f"http://127.0.0.1:{runner.addresses[0][1]}/hook")
        for text in ("one", "two", "three"):
            fake.send_text(USER, USER, text)
        fake.send_text(GROUP, MEMBER, "/help")
        await fake.wait_for(lambda: len(fake.webhook_deliveries) == 4)
    finally:
        await runner.cleanup()
    assert peak == 2  # the user's chat and the group's, at once
    assert [text for chat, text in order if chat == USER] == ["one", "two", "three"]
    assert len(fake.first_posts) == 4  # when each was first POSTed, for the benchmarks


async def test_chat_members_parse_in_ptb(fake: FakeTelegram, bot: Bot) -> None:
    owner = await bot.get_chat_member(GROUP, OWNER)
    admin = await bot.get_chat_member(GROUP, ADMIN)
    member = await bot.get_chat_member(GROUP, MEMBER)
    stranger = await bot.get_chat_member(GROUP, STRANGER)
    assert isinstance(owner, ChatMemberOwner) and owner.user.id == OWNER
    assert isinstance(admin, ChatMemberAdministrator) and admin.can_delete_messages
    assert isinstance(member, ChatMemberMember)
    assert isinstance(stranger, ChatMemberLeft)
    admins = await bot.get_chat_administrators(GROUP)
    assert [m.user.id for m in admins] == [OWNER, ADMIN]
    chat = await bot.get_chat(GROUP)
    assert (chat.id, chat.title, chat.type) == (GROUP, "Headshots", "supergroup")
    with pytest.raises(BadRequest, match="Chat not found"):
        await bot.get_chat(-100999)


async def test_anonymous_admins_post_as_the_group(fake: FakeTelegram, bot: Bot) -> None:
    sent = fake.send_text(GROUP, ADMIN, "/headshot", anonymous_admin=True)
    assert sent["from"]["id"] == GROUP_ANONYMOUS_BOT_ID and sent["sender_chat"]["id"] == GROUP
    message = (await next_update(bot)).message
    assert message is not None and message.from_user is not None
    assert (message.from_user.id, message.from_user.username) == (
        GROUP_ANONYMOUS_BOT_ID,
        "GroupAnonymousBot",
    )
    assert message.sender_chat is not None and message.sender_chat.id == GROUP
    assert message.entities[0].type == "bot_command"
    with pytest.raises(AssertionError):
        fake.send_text(GROUP, MEMBER, "hi", anonymous_admin=True)


async def test_private_chats_need_the_user_first(fake: FakeTelegram, bot: Bot) -> None:
    with pytest.raises(Forbidden, match="can't initiate conversation"):
        await bot.send_message(OTHER, "hello")
    with pytest.raises(BadRequest, match="Chat not found"):
        await bot.send_message(777, "hello")
    fake.send_text(OTHER, OTHER, "/start")
    await bot.send_message(OTHER, "welcome")
    fake.block(OTHER)
    with pytest.raises(Forbidden, match="blocked by the user"):
        await bot.send_chat_action(OTHER, "typing")
    assert [m["text"] for m in fake.bot_messages(OTHER)] == ["welcome"]


# PTB itself reads the deprecated int form of retry_after while building the exception.
@pytest.mark.filterwarnings("ignore::telegram.warnings.PTBDeprecationWarning")
async def test_flood_control_raises_retry_after(fake: FakeTelegram, bot: Bot) -> None:
    fake.send_text(USER, USER, "/start")
    fake.flood["sendMessage"] = 1
    with pytest.raises(RetryAfter):
        await bot.send_message(USER, "one")
    assert fake.calls_to("sendMessage")[-1].status == 429
    await bot.send_message(USER, "two")
    assert fake.flood["sendMessage"] == 0


async def test_an_application_polls_and_answers(fake: FakeTelegram) -> None:
    async def start(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        assert update.message is not None
        user = update.message.from_user
        assert user is not None
        await update.message.reply_text(f"Hello {user.first_name}", do_quote=True)

    app: Application[Any, Any, Any, Any, Any, Any] = (
        ApplicationBuilder()
        .token(fake.token)
        .base_url(f"{fake.api_base}/bot")
        .base_file_url(f"{fake.api_base}/file/bot")
        .build()
    )
    app.add_handler(CommandHandler("start", start))
    await app.initialize()
    await app.start()
    assert app.updater is not None
    await app.updater.start_polling()
    try:
        asked = fake.send_text(USER, USER, "/start")
        reply = await fake.wait_for(lambda: fake.bot_messages(USER))
        assert reply[0]["text"] == "Hello Ada"
        assert reply[0]["reply_to_message"]["message_id"] == asked["message_id"]
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()
