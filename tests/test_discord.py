"""The Discord adapter end to end: the real discord.py against the fake Discord in
`tests/fake_discord.py` (REST, gateway and CDN on loopback), the whole service behind it with
the real ModelsLab client against the simulator over HTTP, and a real SQLite file."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord
import pytest
from PIL import Image
from sqlalchemy import text

from adapters.discord import DiscordAdapter
from backends.modelslab.simulator import Simulator
from bot.app import HeadshotApp, Overrides
from bot.config import ConfigError, load_settings
from bot.logs import LogFormat
from tests.conftest import FAST, TEST_KEY, make_image, shared_image_workers
from tests.databases import query, stored_bytes
from tests.fake_discord import FakeDiscord, Interaction, Message
from tests.logs import assert_secret_absent, json_lines, service_logging

GUILD = 1_180_000_000_000_000_001
OTHER_GUILD = 1_180_000_000_000_000_002
ALICE, BOB, MOD, OWNER = 2001, 2002, 2003, 2999
MANAGE_GUILD = 1 << 5
EDIT_INTERVAL = 0.05
# Discord's 5 s between two IDENTIFYs of one bucket, shortened.
IDENTIFY_WINDOW = 1.0


class World:
    """Fake Discord, simulator, the service and its Discord adapter; restartable."""

    def __init__(
        self, tmp_path: Path, fake: FakeDiscord, simulator: Simulator, database_url: str
    ) -> None:
        self.tmp_path = tmp_path
        self.database_url = database_url
        self.fake = fake
        self.simulator = simulator
        self.app: HeadshotApp | None = None
        self.adapter: DiscordAdapter | None = None
        self.settings: dict[str, Any] = {}
        self.timings = FAST

    async def start(self, **settings: Any) -> World:
        await self.start_service(**settings)
        await self.start_adapter()
        return self

    async def start_service(self, **settings: Any) -> None:
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
            "owner_ids": f"discord:{OWNER}",
            "discord_token": self.fake.token,
            "discord_api_base": self.fake.api_base,
            "discord_gateway_url": self.fake.gateway_url,
            **self.settings,
        }
        overrides = Overrides(
            timings=self.timings, local_webhooks=True, images=shared_image_workers()
        )
        self.app = HeadshotApp(load_settings(**values), overrides)
        await self.app.start()

    async def start_adapter(self) -> None:
        assert self.app is not None
        self.adapter = DiscordAdapter(
            self.app.commands,
            self.app.settings,
            edit_interval=EDIT_INTERVAL,
            identify_window=IDENTIFY_WINDOW,
        )
        await self.adapter.start()
        await asyncio.wait_for(self.adapter.wait_ready(), 10)

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
        """Until every result is shown and noted as such (the note goes just after)."""
        async with asyncio.timeout(10):
            while await self.rows("deliveries"):
                await asyncio.sleep(0.02)

    async def headshot(
        self, *, user_id: int = ALICE, guild_id: int | None = GUILD, **options: Any
    ) -> Interaction:
        selfie = self.fake.upload(make_image(), "me.png", "image/png")
        return await self.fake.run_command(
            "headshot", {"selfie": selfie, **options}, user_id=user_id, guild_id=guild_id
        )


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    # The adapter points discord.py at the fake through two class attributes: restore them.
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    gateway = discord.gateway.DiscordWebSocket
    monkeypatch.setattr(gateway, "DEFAULT_GATEWAY", gateway.DEFAULT_GATEWAY)
    async with FakeDiscord() as server:
        yield server
        assert server.unhandled == []


@pytest.fixture
async def world(
    tmp_path: Path, fake: FakeDiscord, simulator: Simulator, database_url: str
) -> AsyncIterator[World]:
    w = World(tmp_path, fake, simulator, database_url)
    yield w
    await w.stop()


def is_result(message: Message | None) -> bool:
    return message is not None and any(
        str(embed.get("description", "")).startswith("Done:") for embed in message.embeds
    )


async def result_of(fake: FakeDiscord, interaction: Interaction) -> Message:
    await fake.wait_for(lambda: is_result(interaction.original), timeout=30)
    assert interaction.original is not None
    return interaction.original


def posted(fake: FakeDiscord, channel_id: int) -> list[Message]:
    """Messages the bot posted in the channel itself, not as an interaction's response."""
    return [m for m in fake.channel_messages(channel_id) if m.interaction_id is None]


def texts(message: Message) -> list[str]:
    return [str(edit.get("content") or "") for edit in message.edits]


def decode(data: bytes) -> tuple[str | None, tuple[int, int]]:
    with Image.open(io.BytesIO(data)) as image:
        return image.format, image.size


# ---- registration --------------------------------------------------------------------------


async def test_commands_are_registered_from_the_command_layer(world: World) -> None:
    await world.start()
    commands = {command["name"]: command for command in world.fake.commands}
    assert {"headshot", "facegen", "avatar", "flux-headshot", "styles", "history", "quota"} <= set(
        commands
    )
    assert {"forget", "help", "admin"} <= set(commands)
    headshot = {option["name"]: option for option in commands["headshot"]["options"]}
    assert headshot["selfie"]["type"] == 11  # an attachment
    assert [c["value"] for c in headshot["style"]["choices"]][:2] == ["corporate", "linkedin"]
    assert (headshot["samples"]["min_value"], headshot["samples"]["max_value"]) == (1, 2)
    assert set(commands["headshot"]["contexts"]) == {0, 1}  # servers and DMs with the bot
    avatar = {option["name"] for option in commands["avatar"]["options"]}
    assert {"pose_image", "pose_strength", "controlnet_selection"} <= avatar

    admin = commands["admin"]
    assert admin["default_member_permissions"] == str(MANAGE_GUILD)
    assert admin["contexts"] == [0]  # servers only
    sub = {option["name"]: option for option in admin["options"]}
    assert sub["quota"]["type"] == 2 and sub["quota"]["options"][0]["name"] == "set"
    assert sub["banned-words"]["type"] == 2
    assert {"grant", "ban", "unban", "stats", "refund", "audit", "style-default"} <= set(sub)
    # "everyone" is the server's @everyone role: the option takes people and roles.
    assert sub["quota"]["options"][0]["options"][0]["type"] == 9


# ---- generation ------------------------------------------------------------------------------


async def test_headshot_is_deferred_shows_progress_and_ends_with_the_image_and_buttons(
    world: World,
) -> None:
    await world.start()
    world.simulator.config.processing_seconds = 0.5
    interaction = await world.headshot(style="corporate", prompt="navy suit")

    await interaction.wait_acked()
    assert interaction.acked_at is not None and interaction.acked_at - interaction.sent_at < 3
    assert interaction.callback_type == 5 and not interaction.ephemeral
    result = await result_of(world.fake, interaction)

    shown = texts(result)
    assert any(t.startswith("Got it: your corporate headshot is queued as job ") for t in shown)
    assert any(t.startswith(("Queued", "Generating")) for t in shown), shown
    description = result.embeds[0]["description"]
    assert description.startswith("Done: 1 image · corporate · seed ")
    assert len(result.files) == 1
    assert decode(result.files[0].data)[0] in ("PNG", "JPEG", "WEBP")
    assert result.embeds[0]["image"]["url"] == f"attachment://{result.files[0].filename}"
    assert [b["label"] for b in result.buttons()] == ["Re-roll", "Delete"]
    assert result.buttons()[0]["custom_id"].startswith("hs:reroll job=")
    await world.no_deliveries_owed()  # shown, so no longer owed


async def test_reroll_and_delete_from_the_result_buttons(world: World) -> None:
    await world.start()
    fake = world.fake
    first = await result_of(fake, await world.headshot(style="studio"))

    again = await fake.press(first, "Re-roll", user_id=ALICE, guild_id=GUILD)
    rerolled = await result_of(fake, again)
    assert again.callback_type == 5 and not again.ephemeral
    assert any("(a re-roll of job " in t for t in texts(rerolled))
    assert rerolled.embeds[0]["description"].startswith("Done: 1 image · studio · seed ")
    assert rerolled.id != first.id

    # Someone else's Delete changes nothing and tells only them.
    stranger = await fake.press(first, "Delete", user_id=BOB, guild_id=GUILD)
    await fake.wait_for(lambda: stranger.original is not None and not stranger.original.loading)
    assert stranger.ephemeral and stranger.original is not None
    assert stranger.original.content.startswith("No job of yours matches")
    # Nor can a stranger re-roll it.
    stranger = await fake.press(first, "Re-roll", user_id=BOB, guild_id=GUILD)
    await fake.wait_for(lambda: bool(stranger.followups))
    assert stranger.followups[0].ephemeral
    assert stranger.followups[0].content.startswith("No job of yours matches")
    assert len(first.files) == 1 and not first.deleted

    owner = await fake.press(first, "Delete", user_id=ALICE, guild_id=GUILD)
    await fake.wait_for(lambda: first.content.startswith("Deleted job "))
    assert owner.callback_type == 6  # the pressed message itself is updated
    assert first.files == [] and first.buttons() == [] and first.embeds == []
    assert (
        await world.rows("outputs", "job_id IN (SELECT id FROM jobs WHERE deleted_at IS NOT NULL)")
        == 0
    )


async def test_two_samples_arrive_as_one_gallery(world: World) -> None:
    await world.start()
    result = await result_of(world.fake, await world.headshot(samples=2))
    assert result.embeds[0]["description"].startswith("Done: 2 images")
    assert len(result.files) == 2 and len(result.embeds) == 2
    assert result.embeds[0]["url"] == result.embeds[1]["url"]  # one gallery
    images = {embed["image"]["url"] for embed in result.embeds}
    assert images == {f"attachment://{file.filename}" for file in result.files}


async def test_a_result_over_the_upload_limit_is_shrunk_to_fit(world: World) -> None:
    await world.start()
    selfie = world.fake.upload(make_image((512, 640)), "me.png", "image/png")
    limit = 12_000
    interaction = await world.fake.run_command(
        "headshot",
        {"selfie": selfie},
        user_id=ALICE,
        guild_id=GUILD,
        attachment_size_limit=limit,
    )
    result = await result_of(world.fake, interaction)
    (image,) = result.files
    assert len(image.data) <= limit and image.filename.endswith(".jpg")
    assert decode(image.data)[0] == "JPEG"


async def test_a_failed_job_offers_to_try_again(world: World) -> None:
    await world.start()
    fake = world.fake
    world.simulator.config.failure_rate = 1.0
    interaction = await world.headshot()
    await fake.wait_for(
        lambda: (
            interaction.original is not None
            and interaction.original.content.startswith("Sorry, that didn't work:")
        ),
        timeout=30,
    )
    failed = interaction.original
    assert failed is not None and "Your credits were returned." in failed.content
    assert [b["label"] for b in failed.buttons()] == ["Try again"]

    world.simulator.config.failure_rate = 0.0
    retry = await fake.press(failed, "Try again", user_id=ALICE, guild_id=GUILD)
    assert (await result_of(fake, retry)).files


async def test_headshot_in_a_dm(world: World) -> None:
    await world.start()
    interaction = await world.headshot(guild_id=None)
    result = await result_of(world.fake, interaction)
    assert len(result.files) == 1
    assert result.channel_id == interaction.channel_id


# ---- refusals: one clear ephemeral message, nothing reserved --------------------------------


async def assert_nothing_reserved(world: World) -> None:
    assert await world.rows("jobs") == 0
    assert await world.rows("credit_ledger") == 0


async def test_a_non_image_attachment_is_refused_at_once(world: World) -> None:
    await world.start()
    pdf = world.fake.upload(b"%PDF-1.7 ...", "cv.pdf", "application/pdf")
    interaction = await world.fake.run_command(
        "headshot", {"selfie": pdf}, user_id=ALICE, guild_id=GUILD
    )
    await interaction.wait_acked()
    assert interaction.callback_type == 4 and interaction.ephemeral
    assert interaction.original is not None
    assert interaction.original.content.startswith("That file isn't an image: send a JPEG, PNG")
    await assert_nothing_reserved(world)


async def test_a_bad_pose_image_is_not_called_a_selfie(world: World) -> None:
    await world.start()
    selfie = world.fake.upload(make_image(), "me.png", "image/png")
    pose = world.fake.upload(b"%PDF-1.7 ...", "pose.pdf", "application/pdf")
    interaction = await world.fake.run_command(
        "avatar", {"selfie": selfie, "pose_image": pose}, user_id=ALICE, guild_id=GUILD
    )
    await interaction.wait_acked()
    assert interaction.original is not None
    assert interaction.original.content.startswith("That file isn't an image: send a JPEG, PNG")
    assert interaction.original.content.endswith("pose image")
    await assert_nothing_reserved(world)


async def test_an_attachment_over_the_interactions_limit_is_refused_at_once(world: World) -> None:
    await world.start()
    big = world.fake.upload(make_image(), "big.png", "image/png", size=9 * 1024 * 1024)
    interaction = await world.fake.run_command(
        "headshot",
        {"selfie": big},
        user_id=ALICE,
        guild_id=GUILD,
        attachment_size_limit=8 * 1024 * 1024,
    )
    await interaction.wait_acked()
    assert interaction.callback_type == 4 and interaction.ephemeral
    assert interaction.original is not None
    assert interaction.original.content == "That image is too large (9.0 MB): send one under 8 MB"
    await assert_nothing_reserved(world)


async def test_bytes_that_are_not_an_image_are_refused_after_download(world: World) -> None:
    await world.start()
    fake_png = world.fake.upload(b"not really a png", "me.png", "image/png")
    interaction = await world.fake.run_command(
        "headshot", {"selfie": fake_png}, user_id=ALICE, guild_id=GUILD
    )
    await world.fake.wait_for(lambda: bool(interaction.followups))
    assert interaction.original is not None and interaction.original.deleted
    assert interaction.followups[0].ephemeral
    assert interaction.followups[0].content.startswith("That file isn't an image")
    await assert_nothing_reserved(world)


async def test_a_banned_word_is_refused_privately(world: World) -> None:
    await world.start()
    fake = world.fake
    added = await fake.run_command(
        "admin banned-words add",
        {"word": "balloon"},
        user_id=MOD,
        guild_id=GUILD,
        permissions=MANAGE_GUILD,
    )
    await fake.wait_for(lambda: added.original is not None and not added.original.loading)

    interaction = await world.headshot(prompt="holding a red balloon")
    await fake.wait_for(lambda: bool(interaction.followups))
    assert interaction.original is not None and interaction.original.deleted
    refusal = interaction.followups[0]
    assert refusal.ephemeral
    assert refusal.content.startswith("Your prompt contains “balloon”, which isn't allowed here")
    await assert_nothing_reserved(world)


async def test_an_exhausted_quota_is_refused_privately(world: World) -> None:
    await world.start(daily_quota=0)
    interaction = await world.headshot()
    await world.fake.wait_for(lambda: bool(interaction.followups))
    assert interaction.followups[0].ephemeral
    assert interaction.followups[0].content.startswith("You have no credits left: ")
    await assert_nothing_reserved(world)


# ---- moderation --------------------------------------------------------------------------------


async def admin(
    world: World,
    path: str,
    options: dict[str, Any] | None = None,
    *,
    user_id: int = MOD,
    permissions: int = MANAGE_GUILD,
) -> str:
    fake = world.fake
    interaction = await fake.run_command(
        path, options or {}, user_id=user_id, guild_id=GUILD, permissions=permissions
    )
    await fake.wait_for(
        lambda: interaction.original is not None and not interaction.original.loading
    )
    assert interaction.ephemeral, path  # moderation answers only the moderator
    assert interaction.original is not None
    return interaction.original.content


async def test_every_admin_command(world: World) -> None:
    await world.start()
    job = await result_of(world.fake, await world.headshot(user_id=BOB))
    job_id = job.buttons()[0]["custom_id"].split("job=")[1]

    assert await admin(world, "admin quota set", {"user": BOB, "per_day": 3}) == (
        f"Daily allowance for user {BOB} here: 3 images per day."
    )
    assert await admin(world, "admin quota set", {"user": GUILD, "per_day": 4}) == (
        "Daily allowance for everyone here: 4 images per day."
    )
    assert await admin(world, "admin grant", {"user": BOB, "credits": 2}) == (
        f"Gave user {BOB} 2 credits; they don't expire."
    )
    assert await admin(world, "admin ban", {"user": BOB, "reason": "spam"}) == (
        f"User {BOB} is now banned here."
    )
    refused = await world.headshot(user_id=BOB)
    await world.fake.wait_for(lambda: bool(refused.followups))
    assert refused.followups[0].content.startswith("You can't use this bot here (spam).")
    assert await admin(world, "admin unban", {"user": BOB}) == (
        f"User {BOB} may use the bot here again."
    )
    assert (await admin(world, "admin stats")).startswith("Last 7 days here: 1 job, 1 succeeded")
    assert (
        await admin(world, "admin disable", {"operation": "avatar"}) == "/avatar is now off here."
    )
    assert await admin(world, "admin enable", {"operation": "avatar"}) == "/avatar is now on here."
    assert await admin(world, "admin style-default", {"style": "studio"}) == (
        "Jobs here now use the studio style unless they name one."
    )
    assert await admin(world, "admin safety", {"level": "blur"}) == (
        "Flagged images here are now shown as: blur."
    )
    assert await admin(world, "admin banned-words add", {"word": "balloon"}) == (
        "Prompts with “balloon” are now refused here."
    )
    assert await admin(world, "admin banned-words list") == "Banned words: balloon."
    assert await admin(world, "admin banned-words remove", {"word": "balloon"}) == (
        "Prompts with “balloon” are allowed again here."
    )
    assert (await admin(world, "admin jobs")).startswith(
        f"Recent jobs:\n• {job_id[:8]} · user {BOB}"
    )
    assert await admin(world, "admin jobs", {"failed": True}) == "No failed jobs."
    assert await admin(world, "admin refund", {"job": job_id}) == (
        f"Returned 1 credit to user {BOB} for job {job_id[:8]}."
    )
    audit = await admin(world, "admin audit")
    assert audit.startswith("Audit log, newest first (page 1):")
    assert f"discord:{MOD} · refund → discord:{BOB}" in audit


async def test_admin_stats_shows_its_chart_in_the_embed(world: World) -> None:
    await world.start()
    await result_of(world.fake, await world.headshot(user_id=BOB))
    fake = world.fake
    interaction = await fake.run_command(
        "admin stats", {"days": 30}, user_id=MOD, guild_id=GUILD, permissions=MANAGE_GUILD
    )
    await fake.wait_for(
        lambda: interaction.original is not None and not interaction.original.loading
    )
    answer = interaction.original
    assert answer is not None and interaction.ephemeral
    assert answer.content.startswith("Last 30 days here: 1 job, 1 succeeded")
    [chart] = answer.files
    assert chart.filename == "stats.png"
    assert [embed["image"]["url"] for embed in answer.embeds] == ["attachment://stats.png"]
    assert answer.payload()["embeds"][0]["image"]["url"] == chart.url
    with Image.open(io.BytesIO(chart.data)) as picture:
        assert (picture.format, picture.size) == ("PNG", (1000, 750))


async def test_admin_commands_are_checked_again_when_run(world: World) -> None:
    """A server can show /admin to anyone; running it still needs Manage Server."""
    await world.start()
    answer = await admin(world, "admin stats", user_id=ALICE, permissions=0)
    assert answer == "Only this community's moderators can use /admin commands."
    assert await world.rows("audit_log") == 0


# ---- history and forget ------------------------------------------------------------------------


async def test_history_pages_turn_in_place(world: World) -> None:
    await world.start(daily_quota=20, max_active_per_user=10)
    for _ in range(6):
        await result_of(world.fake, await world.headshot())
    fake = world.fake
    history = await fake.run_command("history", user_id=ALICE, guild_id=GUILD)
    await fake.wait_for(lambda: history.original is not None and not history.original.loading)
    page = history.original
    assert page is not None and history.ephemeral
    assert page.content.startswith("Your jobs, newest first (page 1 of 2):")
    assert len(page.files) == 5
    assert [b["label"] for b in page.buttons()] == ["Next"]

    turn = await fake.press(page, "Next", user_id=ALICE, guild_id=GUILD)
    await fake.wait_for(lambda: page.content.startswith("Your jobs, newest first (page 2 of 2)"))
    assert turn.callback_type == 6
    assert len(page.files) == 1
    assert [b["label"] for b in page.buttons()] == ["Previous"]

    await fake.press(page, "Previous", user_id=ALICE, guild_id=GUILD)
    await fake.wait_for(lambda: page.content.startswith("Your jobs, newest first (page 1 of 2)"))
    assert len(page.files) == 5
    # Galleries hold four images: the fifth starts another.
    galleries = [embed["url"] for embed in page.embeds]
    assert len(set(galleries[:4])) == 1 and galleries[4] != galleries[0]


async def test_forget_asks_for_confirmation_with_a_button(world: World) -> None:
    await world.start()
    fake = world.fake
    await result_of(fake, await world.headshot())
    ask = await fake.run_command("forget", user_id=ALICE, guild_id=GUILD)
    await fake.wait_for(lambda: ask.original is not None and not ask.original.loading)
    prompt = ask.original
    assert prompt is not None and ask.ephemeral
    assert prompt.content.startswith("This deletes everything we hold about you: 1 job")

    await fake.press(prompt, "Delete everything", user_id=ALICE, guild_id=GUILD)
    await fake.wait_for(lambda: prompt.content.startswith("Done: deleted 1 job"))
    assert await world.rows("jobs") == 0
    assert await world.rows("users") == 0


# ---- load, expiry, restart ---------------------------------------------------------------------


async def test_200_concurrent_headshots_are_all_acknowledged_within_3_seconds(
    world: World,
) -> None:
    await world.start()
    world.simulator.config.processing_seconds = 60  # they stay queued: only the acks matter
    fake = world.fake
    selfie = make_image()
    uploads = [fake.upload(selfie, "me.png", "image/png") for _ in range(200)]
    interactions = await asyncio.gather(
        *(
            fake.run_command("headshot", {"selfie": upload}, user_id=10_000 + n, guild_id=GUILD)
            for n, upload in enumerate(uploads)
        )
    )
    await asyncio.gather(*(i.wait_acked(timeout=30) for i in interactions))
    delays = sorted(i.acked_at - i.sent_at for i in interactions if i.acked_at is not None)
    assert len(delays) == 200
    assert delays[-1] < 3.0, f"slowest acknowledgement {delays[-1]:.2f} s"
    assert all(i.callback_type == 5 for i in interactions)


async def test_a_job_outliving_the_interaction_token_is_posted_in_the_channel(
    world: World,
) -> None:
    await world.start()
    fake = world.fake
    world.simulator.config.processing_seconds = 1.0
    fake.token_lifetime = 0.3
    interaction = await world.headshot()
    await fake.wait_for(lambda: bool(posted(fake, interaction.channel_id)), timeout=30)
    delivered = posted(fake, interaction.channel_id)[0]
    assert delivered.content.startswith(f"<@{ALICE}>")
    assert delivered.allowed_mentions is not None
    assert [int(user) for user in delivered.allowed_mentions["users"]] == [ALICE]
    assert delivered.allowed_mentions.get("parse") == []  # nobody else is pinged
    assert is_result(delivered) and len(delivered.files) == 1
    assert delivered.message_reference is not None
    assert interaction.original is not None
    assert int(delivered.message_reference["message_id"]) == interaction.original.id


async def test_a_result_whose_channel_is_gone_is_sent_as_a_dm(world: World) -> None:
    await world.start()
    fake = world.fake
    world.simulator.config.processing_seconds = 1.0
    fake.token_lifetime = 0.3
    interaction = await world.headshot()
    await interaction.wait_acked()
    fake.delete_channel(interaction.channel_id)

    await fake.wait_for(lambda: fake.dm_channel_of(ALICE) is not None, timeout=30)
    dm = fake.dm_channel_of(ALICE)
    assert dm is not None
    await fake.wait_for(lambda: bool(posted(fake, dm)))
    sent = posted(fake, dm)[0]
    assert is_result(sent) and len(sent.files) == 1
    await world.no_deliveries_owed()


async def test_a_restart_mid_job_still_delivers_and_old_buttons_still_work(
    world: World,
) -> None:
    await world.start()
    fake = world.fake
    earlier = await result_of(fake, await world.headshot(style="casual"))

    world.simulator.config.processing_seconds = 1.5
    interaction = await world.headshot(style="studio")
    await fake.wait_for(
        lambda: (
            interaction.original is not None
            and any(t.startswith(("Queued", "Generating")) for t in texts(interaction.original))
        )
    )
    await world.restart()  # the whole service: the new process knows no interaction token

    await fake.wait_for(lambda: bool(posted(fake, interaction.channel_id)), timeout=30)
    delivered = posted(fake, interaction.channel_id)[0]
    assert delivered.content.startswith(f"<@{ALICE}>")
    assert delivered.embeds[0]["description"].startswith("Done: 1 image · studio · seed ")
    assert len(delivered.files) == 1
    await world.no_deliveries_owed()

    again = await fake.press(earlier, "Re-roll", user_id=ALICE, guild_id=GUILD)
    rerolled = await result_of(fake, again)
    assert rerolled.embeds[0]["description"].startswith("Done: 1 image · casual · seed ")


@pytest.mark.parametrize("log_format", ["plain", "json"])
async def test_no_interaction_token_reaches_the_database_or_the_log(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture, log_format: LogFormat
) -> None:
    # What `headshot-bot run` sets up.
    with service_logging("DEBUG", [world.fake.token], log_format=log_format) as written:
        logging.getLogger().addHandler(caplog.handler)
        interaction = await _token_free_run(world, tmp_path, caplog)
    for secret in (interaction.token, world.fake.token):
        assert_secret_absent(written.getvalue(), secret, json_format=log_format == "json")
    if log_format == "json":
        driven = [e for e in json_lines(written.getvalue()) if "operation" in e]
        assert driven and all(e["platform"] == "discord" for e in driven)


async def _token_free_run(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> Interaction:
    await world.start()
    world.simulator.config.processing_seconds = 0.3
    interaction = await world.headshot()
    await result_of(world.fake, interaction)
    database = stored_bytes(world.database_url)
    assert interaction.token.encode() not in database
    assert interaction.token not in caplog.text
    assert world.fake.token not in caplog.text
    return interaction


async def test_discords_recommended_shard_count_is_used_when_none_is_set(
    tmp_path: Path, simulator: Simulator, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    gateway = discord.gateway.DiscordWebSocket
    monkeypatch.setattr(gateway, "DEFAULT_GATEWAY", gateway.DEFAULT_GATEWAY)
    async with FakeDiscord(recommended_shards=2) as fake:
        world = World(tmp_path, fake, simulator, database_url)
        try:
            await world.start()
            assert sorted(session.shard_id for session in fake.sessions) == [0, 1]
        finally:
            await world.stop()


async def test_sharded_gateway_routes_each_server_to_its_shard(world: World) -> None:
    await world.start(discord_shards=2)
    fake = world.fake
    assert sorted(session.shard_id for session in fake.sessions) == [0, 1]
    shards = set()
    for guild_id in (GUILD, GUILD + (1 << 22)):  # one guild on each shard
        interaction = await world.headshot(guild_id=guild_id)
        result = await result_of(fake, interaction)
        assert len(result.files) == 1
        shards.add(interaction.shard_id)
    assert shards == {0, 1}


async def test_a_shard_identifies_in_its_buckets_turn_and_buckets_identify_together(
    world: World,
) -> None:
    """Discord takes one IDENTIFY per bucket (shard id % max_concurrency) in its window: the
    shards of one bucket identify a window apart, those of another bucket meanwhile."""
    fake = world.fake
    fake.max_concurrency, fake.identify_window = 2, IDENTIFY_WINDOW
    await world.start(discord_shards=3)
    at = {identify.shard_id: identify.at for identify in fake.identifies}
    assert [identify.refused for identify in fake.identifies] == [False] * 3
    assert at[2] - at[0] >= IDENTIFY_WINDOW  # bucket 0, twice
    assert at[1] - at[0] < IDENTIFY_WINDOW  # bucket 1, beside bucket 0


@pytest.mark.parametrize("database_kind", ["postgresql"])
async def test_replicas_starting_together_identify_each_bucket_a_window_apart(
    tmp_path: Path, fake: FakeDiscord, simulator: Simulator, database_url: str
) -> None:
    """Two replicas, each with a shard of each bucket, start at once: every IDENTIFY of a
    bucket waits for the bucket's turn across the replicas, so Discord refuses none."""
    fake.max_concurrency, fake.identify_window = 2, IDENTIFY_WINDOW
    shared = {"pseudonym_key": "d5" * 32, "discord_shards": 4}
    first = World(tmp_path / "first", fake, simulator, database_url)
    second = World(tmp_path / "second", fake, simulator, database_url)
    try:
        # One after the other: Alembic's migration context is one per process.
        await first.start_service(discord_shard_ids="0,1", **shared)
        await second.start_service(discord_shard_ids="2,3", **shared)
        await asyncio.gather(first.start_adapter(), second.start_adapter())
        assert sorted(identify.shard_id for identify in fake.identifies) == [0, 1, 2, 3]
        assert not any(identify.refused for identify in fake.identifies)
        for bucket in (0, 1):
            earlier, later = sorted(i.at for i in fake.identifies if i.bucket == bucket)
            assert later - earlier >= IDENTIFY_WINDOW
    finally:
        await second.stop()
        await first.stop()


# ---- the launcher ------------------------------------------------------------------------------


async def run_service(
    fake: FakeDiscord, tmp_path: Path, token: str, database_url: str
) -> asyncio.subprocess.Process:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSLAB_", "DISCORD_"))}
    env = {
        **clean,
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url,
        "IMAGE_STORE_SHARED": "1",
        "WEB_PORT": "0",
        "DISCORD_TOKEN": token,
        "DISCORD_API_BASE": fake.api_base,
        "DISCORD_GATEWAY_URL": fake.gateway_url,
    }
    return await asyncio.create_subprocess_exec(
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


async def test_run_starts_the_discord_adapter_when_a_token_is_set(
    fake: FakeDiscord, tmp_path: Path, database_url: str
) -> None:
    process = await run_service(fake, tmp_path, fake.token, database_url)
    try:
        await fake.wait_ready(timeout=30)
        await fake.wait_for(lambda: bool(fake.commands), timeout=30)
        interaction = await fake.run_command("styles", user_id=ALICE, guild_id=GUILD)
        await fake.wait_for(
            lambda: interaction.original is not None and not interaction.original.loading,
            timeout=30,
        )
        assert interaction.original is not None
        assert interaction.original.content.startswith("Styles")
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, stderr.decode()
    assert fake.token not in stderr.decode()


async def test_run_with_a_refused_token_stops_with_one_line(
    fake: FakeDiscord, tmp_path: Path, database_url: str
) -> None:
    process = await run_service(fake, tmp_path, "not-the-token", database_url)
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 2
    assert stderr.decode().strip().splitlines()[-1] == (
        "headshot-bot: invalid setting DISCORD_TOKEN: Discord refused it"
    )
    assert "not-the-token" not in stderr.decode()


async def test_each_replica_runs_its_own_shards_and_a_guild_is_served_by_its_shards_one(
    tmp_path: Path, fake: FakeDiscord, simulator: Simulator, postgres_url: str
) -> None:
    """Two replicas split two shards: a guild's interactions reach, and are handled by, only
    the replica running its shard. A third asking for a shard that runs is refused."""
    shared = {"pseudonym_key": "d4" * 32, "discord_shards": 2}
    first = World(tmp_path / "first", fake, simulator, postgres_url)
    second = World(tmp_path / "second", fake, simulator, postgres_url)
    third = World(tmp_path / "third", fake, simulator, postgres_url)
    try:
        await first.start(discord_shard_ids="0", **shared)
        await second.start(discord_shard_ids="1", **shared)
        assert sorted(session.shard_id for session in fake.sessions) == [0, 1]
        with pytest.raises(ConfigError) as refused:
            await third.start(**shared)  # all shards: 0 runs elsewhere
        assert str(refused.value).startswith(
            "invalid setting DISCORD_SHARD_IDS: shard 0 already runs on another replica"
        )
        owners = {0: first, 1: second}
        for guild_id in (GUILD, GUILD + (1 << 22)):  # one guild on each shard
            shard = (guild_id >> 22) % 2
            interaction = await first.headshot(guild_id=guild_id)
            await result_of(fake, interaction)
            assert interaction.shard_id == shard
            ((handled_by,),) = query(
                postgres_url, "SELECT lease_owner FROM jobs ORDER BY created_at DESC LIMIT 1"
            )
            owner = owners[shard].app
            assert owner is not None and handled_by == owner.engine.lease.owner
    finally:
        for world in (third, second, first):
            await world.stop()
