"""Deleting a job, or forgetting a person, removes the messages the bot posted with the job's
images: the real python-telegram-bot and discord.py against the fake servers over loopback, the
whole service behind them, on SQLite and PostgreSQL. Telegram's messages older than 48 hours,
which it will not delete, get a placeholder image in place of each one instead."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest
from PIL import Image

from adapters.telegram.posts import PLACEHOLDER_GREY
from backends.modelslab.simulator import Simulator
from tests import test_discord as dc
from tests import test_telegram as tg
from tests.databases import query
from tests.fake_discord import FakeDiscord, Message
from tests.fake_telegram import FakeTelegram

JSON = dict[str, Any]
GROUP, ALICE, BOB = tg.GROUP, tg.ALICE, tg.BOB


# ---- Telegram -----------------------------------------------------------------------------------


@pytest.fixture
async def telegram(
    tmp_path: Path, simulator: Simulator, database_url: str
) -> AsyncIterator[tg.World]:
    async with FakeTelegram() as server:
        for user in (ALICE, BOB):
            server.add_user(user, f"User{user}")
        server.add_group(GROUP, "Headshots", owner=BOB, members=[ALICE])
        world = tg.World(tmp_path, server, simulator, database_url)
        await world.start()
        yield world
        await world.stop()


async def telegram_result(world: tg.World, chat_id: int, caption: str, count: int) -> list[JSON]:
    """Ask for a headshot; the messages of its result (album items first, then the text)."""
    fake = world.fake
    sent = fake.send_photo(chat_id, ALICE, tg.selfie_jpeg(), caption=caption)
    text = await tg.result_in(fake, chat_id, count)
    album = [
        m
        for m in fake.bot_messages(chat_id)
        if m.get("media_group_id")
        and (m.get("reply_to_message") or {}).get("message_id") == sent["message_id"]
    ]
    return [*album, text]


async def telegram_reply(world: tg.World, chat_id: int, asked: JSON, start: str) -> JSON:
    return await tg.bot_reply_to(world.fake, chat_id, asked["message_id"], start)


async def telegram_forget(world: tg.World) -> str:
    """/forget in Alice's private chat, confirmed; the text it ends with."""
    fake = world.fake
    ask = fake.send_text(ALICE, ALICE, "/forget")
    prompt = await telegram_reply(world, ALICE, ask, "This deletes everything")
    (confirm,) = [data for _, data in tg.buttons(prompt)]
    fake.press(ALICE, ALICE, prompt["message_id"], confirm)
    done = await fake.wait_for(
        lambda: (
            tg.caption_or_text(fake.message(ALICE, prompt["message_id"]) or {})
            if tg.caption_or_text(fake.message(ALICE, prompt["message_id"]) or {}).startswith(
                "Done:"
            )
            else None
        )
    )
    return str(done)


async def noted(world: tg.World | dc.World, count: int) -> None:
    """Until `count` posts are noted (just after the result is posted)."""
    async with asyncio.timeout(10):
        while await world.rows("posts") < count:
            await asyncio.sleep(0.02)
    assert await world.rows("posts") == count


def gone(fake: FakeTelegram, chat_id: int, messages: list[JSON]) -> bool:
    return all(fake.message(chat_id, m["message_id"]) is None for m in messages)


async def test_telegram_forget_removes_every_result_message(telegram: tg.World) -> None:
    fake = telegram.fake
    single = await telegram_result(telegram, ALICE, "/headshot studio", 1)
    album = await telegram_result(telegram, GROUP, "/headshot studio samples=2", 1)
    assert len(single) == 1 and len(album) == 3  # two album items, then the text
    await noted(telegram, 4)

    done = await telegram_forget(telegram)
    assert done.startswith("Done: deleted 2 jobs")
    assert "and removed 4 messages of the bot's showing them." in done
    assert "could not be removed" not in done and "too old" not in done
    assert gone(fake, ALICE, single) and gone(fake, GROUP, album)
    assert await telegram.rows("posts") == 0


async def test_telegram_delete_typed_removes_the_album(telegram: tg.World) -> None:
    fake = telegram.fake
    album = await telegram_result(telegram, GROUP, "/headshot studio samples=2", 1)
    other = await telegram_result(telegram, GROUP, "/headshot casual", 2)
    job = tg.job_of(album[-1])
    await noted(telegram, 4)

    asked = fake.send_text(ALICE, ALICE, f"/delete {job[:8]}")
    reply = await telegram_reply(telegram, ALICE, asked, "Deleted job")
    assert reply["text"] == f"Deleted job {job[:8]} and its 2 images."
    assert gone(fake, GROUP, album)
    assert not gone(fake, GROUP, other)  # another job's result stays
    assert await telegram.rows("posts") == 1


async def test_telegram_delete_from_a_shown_job_removes_every_showing(
    telegram: tg.World,
) -> None:
    fake = telegram.fake
    result = await telegram_result(telegram, ALICE, "/headshot studio", 1)
    job = tg.job_of(result[-1])
    # Shown again: in a history page (its images as the page's photo) and by /show.
    history = fake.send_text(ALICE, ALICE, "/history")
    page = await telegram_reply(telegram, ALICE, history, "Your jobs")
    shown_asked = fake.send_text(ALICE, ALICE, f"/show {job[:8]}")
    shown = await telegram_reply(telegram, ALICE, shown_asked, f"Job {job[:8]}")
    assert page.get("photo") and shown.get("photo")
    await noted(telegram, 3)

    fake.press(ALICE, ALICE, shown["message_id"], dict(tg.buttons(shown))["Delete"])
    await fake.wait_for(lambda: gone(fake, ALICE, [*result, page, shown]))
    assert await telegram.rows("posts") == 0


async def test_telegram_delete_button_under_an_album_removes_it_all(telegram: tg.World) -> None:
    fake = telegram.fake
    album = await telegram_result(telegram, GROUP, "/headshot studio samples=2", 1)
    await noted(telegram, 3)

    fake.press(GROUP, ALICE, album[-1]["message_id"], dict(tg.buttons(album[-1]))["Delete"])
    said = await fake.wait_for(
        lambda: next(
            (m for m in fake.bot_messages(GROUP) if tg.caption_or_text(m).startswith("Deleted")),
            None,
        )
    )
    assert said["text"] == f"Deleted job {tg.job_of(album[-1])[:8]} and its 2 images."
    assert gone(fake, GROUP, album)


async def test_telegram_too_old_to_delete_gets_placeholders(telegram: tg.World) -> None:
    fake = telegram.fake
    album = await telegram_result(telegram, GROUP, "/headshot studio samples=2", 1)
    job = tg.job_of(album[-1])
    await noted(telegram, 3)
    for message in album:
        fake.age(GROUP, message["message_id"])

    asked = fake.send_text(ALICE, ALICE, f"/delete {job[:8]}")
    reply = await telegram_reply(telegram, ALICE, asked, "Deleted job")
    assert reply["text"] == (
        f"Deleted job {job[:8]} and its 2 images. 3 messages of the bot's were too old to "
        "delete: their images now show a grey placeholder."
    )
    edits = fake.calls_to("editMessageMedia")
    assert sorted(call.params["message_id"] for call in edits) == sorted(
        m["message_id"] for m in album[:2]
    )
    for item in album[:2]:
        now = fake.message(GROUP, item["message_id"])
        assert now is not None and now["media_group_id"] == item["media_group_id"]
        assert now["caption"] == "This image was deleted."
        assert grey(fake.file_bytes(now["photo"][-1]["file_id"]))
        assert now["photo"][-1]["file_id"] != item["photo"][-1]["file_id"]
    text = fake.message(GROUP, album[-1]["message_id"])
    assert text is not None and text["text"] == "This image was deleted."
    assert "reply_markup" not in text  # no buttons left on it


async def test_telegram_document_album_too_old_keeps_its_kind(
    telegram: tg.World,
) -> None:
    await telegram.stop()
    await telegram.start(telegram_send_as="document")
    fake = telegram.fake
    album = await telegram_result(telegram, GROUP, "/headshot studio samples=2", 1)
    await noted(telegram, 3)
    for message in album:
        fake.age(GROUP, message["message_id"])
    done = await telegram_forget(telegram)
    assert "3 messages of the bot's were too old to delete" in done
    for item in album[:2]:
        now = fake.message(GROUP, item["message_id"])
        assert now is not None and "photo" not in now
        assert grey(fake.file_bytes(now["document"]["file_id"]))


async def test_telegram_forget_says_what_could_not_be_removed(telegram: tg.World) -> None:
    fake = telegram.fake
    await telegram_result(telegram, ALICE, "/headshot studio", 1)
    album = await telegram_result(telegram, GROUP, "/headshot studio samples=2", 1)
    await noted(telegram, 4)
    fake.set_status(GROUP, fake.bot_id, "kicked")

    done = await telegram_forget(telegram)
    assert "removed 1 message of the bot's showing them" in done
    assert done.endswith(
        " 3 messages of the bot's could not be removed: delete them yourself where you can."
    )
    assert not gone(fake, GROUP, album)
    assert await telegram.rows("posts") == 0


def grey(data: bytes) -> bool:
    with Image.open(io.BytesIO(data)) as image:
        colours = image.convert("RGB").getcolors()
    return colours is not None and [colour for _, colour in colours] == [PLACEHOLDER_GREY]


# ---- Discord ------------------------------------------------------------------------------------


@pytest.fixture
async def discord_world(
    tmp_path: Path, simulator: Simulator, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[dc.World]:
    # The adapter points discord.py at the fake through two class attributes: restore them.
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    gateway = discord.gateway.DiscordWebSocket
    monkeypatch.setattr(gateway, "DEFAULT_GATEWAY", gateway.DEFAULT_GATEWAY)
    async with FakeDiscord() as server:
        world = dc.World(tmp_path, server, simulator, database_url)
        await world.start()
        yield world
        await world.stop()
        assert server.unhandled == []


async def discord_results(world: dc.World) -> list[Message]:
    """Three results of Alice's: the answer to her command in a server, the same in a DM, and
    one posted in the server's channel (the interaction's token had run out)."""
    fake = world.fake
    in_server = await dc.result_of(fake, await world.headshot())
    in_dm = await dc.result_of(fake, await world.headshot(guild_id=None))
    fake.token_lifetime = 0.0
    late = await world.headshot()
    await fake.wait_for(lambda: any(dc.is_result(m) for m in dc.posted(fake, late.channel_id)))
    fake.token_lifetime = 900.0
    (posted,) = [m for m in dc.posted(fake, late.channel_id) if dc.is_result(m)]
    await noted(world, 3)
    return [in_server, in_dm, posted]


async def discord_answer(world: dc.World, path: str, **options: Any) -> Message:
    interaction = await world.fake.run_command(path, options, user_id=dc.ALICE, guild_id=dc.GUILD)
    await world.fake.wait_for(
        lambda: interaction.original is not None and not interaction.original.loading
    )
    assert interaction.original is not None
    return interaction.original


async def discord_forget(world: dc.World) -> str:
    prompt = await discord_answer(world, "forget")
    await world.fake.press(prompt, "Delete everything", user_id=dc.ALICE, guild_id=dc.GUILD)
    await world.fake.wait_for(lambda: prompt.content.startswith("Done:"))
    return prompt.content


def job_ids(world: dc.World) -> list[str]:
    rows = query(world.database_url, "SELECT id FROM jobs ORDER BY created_at, id")
    return [str(row[0]) for row in rows]


async def test_discord_forget_deletes_every_result_message(discord_world: dc.World) -> None:
    results = await discord_results(discord_world)
    assert not any(message.deleted for message in results)

    done = await discord_forget(discord_world)
    assert done.startswith("Done: deleted 3 jobs")
    assert "and removed 3 messages of the bot's showing them." in done
    assert "could not be removed" not in done
    assert all(message.deleted for message in results)
    assert await discord_world.rows("posts") == 0


async def test_discord_delete_typed_deletes_the_result(discord_world: dc.World) -> None:
    fake = discord_world.fake
    first = await dc.result_of(fake, await discord_world.headshot())
    second = await dc.result_of(fake, await discord_world.headshot())
    await noted(discord_world, 2)
    job = job_ids(discord_world)[0]

    answer = await discord_answer(discord_world, "delete", job=job[:8])
    assert answer.content == f"Deleted job {job[:8]} and its 1 image."
    assert first.deleted and not second.deleted
    assert await discord_world.rows("posts") == 1


async def test_discord_delete_from_a_shown_job_deletes_the_result(
    discord_world: dc.World,
) -> None:
    fake = discord_world.fake
    result = await dc.result_of(fake, await discord_world.headshot())
    await noted(discord_world, 1)
    job = job_ids(discord_world)[0]
    shown = await discord_answer(discord_world, "show", job=job[:8])
    assert shown.ephemeral and shown.files  # the person's alone: nothing to note

    await fake.press(shown, "Delete", user_id=dc.ALICE, guild_id=dc.GUILD)
    await fake.wait_for(lambda: shown.content.startswith("Deleted job "))
    assert result.deleted
    assert await discord_world.rows("posts") == 0


async def test_discord_forget_says_what_could_not_be_removed(discord_world: dc.World) -> None:
    fake = discord_world.fake
    results = await discord_results(discord_world)
    fake.hide_channel(results[0].channel_id)  # both server results are in that channel

    done = await discord_forget(discord_world)
    assert done.endswith(
        " 2 messages of the bot's could not be removed: delete them yourself where you can."
    )
    assert results[1].deleted and not results[0].deleted and not results[2].deleted


async def test_a_replica_deletes_what_another_one_posted(
    tmp_path: Path, simulator: Simulator, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas on one PostgreSQL, each running one Discord shard: a result posted by the
    first is deleted by the second, which runs the /delete (its guild is on the other shard)."""
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    gateway = discord.gateway.DiscordWebSocket
    monkeypatch.setattr(gateway, "DEFAULT_GATEWAY", gateway.DEFAULT_GATEWAY)
    shared = {"pseudonym_key": "e5" * 32, "discord_shards": 2}
    async with FakeDiscord() as fake:
        first = dc.World(tmp_path / "first", fake, simulator, postgres_url)
        second = dc.World(tmp_path / "second", fake, simulator, postgres_url)
        try:
            await first.start(discord_shard_ids="0", **shared)
            await second.start(discord_shard_ids="1", **shared)
            # A guild's shard is (guild id >> 22) % shards: one guild on each.
            guilds = sorted((dc.GUILD, dc.GUILD + (1 << 22)), key=lambda g: (g >> 22) % 2)
            made = await first.headshot(guild_id=guilds[0])
            result = await dc.result_of(fake, made)
            assert made.shard_id == 0
            await noted(first, 1)
            job = job_ids(first)[0]

            asked = await fake.run_command(
                "delete", {"job": job[:8]}, user_id=dc.ALICE, guild_id=guilds[1]
            )
            await fake.wait_for(lambda: asked.original is not None and not asked.original.loading)
            assert asked.shard_id == 1 and asked.original is not None
            assert asked.original.content == f"Deleted job {job[:8]} and its 1 image."
            assert result.deleted
        finally:
            for world in (second, first):
                await world.stop()
