"""The fake Discord against the real discord.py: a throwaway bot defined here drives it."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import discord
import pytest
import yarl
from discord import app_commands

from tests.fake_discord import FakeDiscord

USER = 310_000_000_000_000_001
VOTER = 310_000_000_000_000_002
OTHER = 310_000_000_000_000_003
GUILD = 1000 << 22  # shard 0 of 2
ODD_GUILD = 1001 << 22  # shard 1 of 2
# What discord.py says about the client's own set-up (no guilds intent, no voice libraries).
CONFIG_WARNINGS = ("Guilds intent seems to be disabled", "voice will NOT be supported")


# -- the throwaway bot -----------------------------------------------------------------------


class Outcomes:
    """Futures the bot's handlers resolve with what they saw, by name."""

    def __init__(self) -> None:
        self._futures: dict[str, asyncio.Future[Any]] = {}

    def future(self, name: str) -> asyncio.Future[Any]:
        if name not in self._futures:
            self._futures[name] = asyncio.get_running_loop().create_future()
        return self._futures[name]

    def set(self, name: str, value: Any) -> None:
        self.future(name).set_result(value)

    async def get(self, name: str) -> Any:
        return await asyncio.wait_for(self.future(name), 10)


class VoteButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=r"vote:(?P<choice>\w+)"):
    """A persistent button: it works for any message carrying it, even after a restart."""

    def __init__(self, choice: str) -> None:
        button: discord.ui.Button[Any] = discord.ui.Button(
            label=f"Vote {choice}", custom_id=f"vote:{choice}", style=discord.ButtonStyle.primary
        )
        super().__init__(button)
        self.choice = choice

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str]
    ) -> VoteButton:
        return cls(match["choice"])

    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer()
        await interaction.edit_original_response(
            content=f"Last vote: {self.choice} by {interaction.user.id}"
        )
        thanks = await interaction.followup.send(
            f"Thanks for voting {self.choice}", ephemeral=True, wait=True
        )
        outcomes: Outcomes = interaction.client.outcomes  # type: ignore[attr-defined]
        outcomes.set(f"vote:{self.choice}", {"thanks": thanks.id, "flags": thanks.flags.value})


class RenameModal(discord.ui.Modal, title="Rename the counter"):
    name: discord.ui.TextInput[Any] = discord.ui.TextInput(label="New name", custom_id="name")


class CounterView(discord.ui.View):
    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.button(label="Add one", custom_id="counter:add")
    async def add(self, interaction: discord.Interaction, button: discord.ui.Button[Any]) -> None:
        await interaction.response.edit_message(content="Count: 1", view=None)

    @discord.ui.button(label="Rename", custom_id="counter:rename")
    async def rename(
        self, interaction: discord.Interaction, button: discord.ui.Button[Any]
    ) -> None:
        await interaction.response.send_modal(RenameModal())


def install_commands(
    tree: app_commands.CommandTree[Any], outcomes: Outcomes, release: asyncio.Event
) -> None:
    """The bot's slash commands; each reports what it saw through `outcomes`."""

    @tree.command(name="headshot", description="Turn a selfie into a headshot")
    async def headshot(
        interaction: discord.Interaction,
        selfie: discord.Attachment,
        count: app_commands.Range[int, 1, 4] = 1,
    ) -> None:
        callback = await interaction.response.defer(thinking=True)
        data = await selfie.read()
        await interaction.edit_original_response(
            content=f"Working on {count} from {selfie.filename} ({len(data)} bytes)"
        )
        embed = discord.Embed(title="Your headshot").set_image(url="attachment://headshot.png")
        view = discord.ui.View(timeout=None)
        view.add_item(discord.ui.Button(label="Re-roll", custom_id="reroll:1"))
        result = discord.File(io.BytesIO(data[::-1]), "headshot.png")
        message = await interaction.edit_original_response(
            content="Done!", attachments=[result], embed=embed, view=view
        )
        outcomes.set(
            "headshot",
            {
                "thinking": callback is not None and callback.is_thinking(),
                "message": message.id,
                "image": message.embeds[0].image.url,
                "attachment": message.attachments[0].url,
                "limit": interaction.filesize_limit,
            },
        )

    admin = app_commands.Group(
        name="admin",
        description="Bot administration",
        guild_only=True,
        default_permissions=discord.Permissions(administrator=True),
    )
    quota = app_commands.Group(name="quota", description="Daily quotas", parent=admin)

    @quota.command(name="set", description="Set someone's daily quota")
    async def quota_set(
        interaction: discord.Interaction,
        user: discord.User,
        limit: app_commands.Range[int, 0, 100],
    ) -> None:
        outcomes.set(
            "quota",
            {
                "member": isinstance(user, discord.Member),
                "user": user.id,
                "limit": limit,
                "admin": interaction.permissions.administrator,
                "guild": interaction.guild_id,
            },
        )
        await interaction.response.send_message(
            f"{user.mention} may make {limit} a day", ephemeral=True
        )

    tree.add_command(admin)

    @tree.command(name="poll", description="Ask a question with vote buttons")
    async def poll(interaction: discord.Interaction) -> None:
        view = discord.ui.View(timeout=None)
        view.add_item(VoteButton("yes"))
        view.add_item(VoteButton("no"))
        await interaction.response.send_message("Cats or dogs?", view=view)

    @tree.command(name="ping", description="Check that the bot answers")
    async def ping(interaction: discord.Interaction) -> None:
        outcomes.set(
            f"ping:{interaction.id}",
            {
                "guild": interaction.guild_id,
                "dm": isinstance(interaction.channel, discord.DMChannel),
                "bot_dm": interaction.context.dm_channel,
                "channel": interaction.channel_id,
                "user": interaction.user.id,
            },
        )
        await interaction.response.send_message("pong")

    @tree.command(name="remind", description="Get a reminder by DM")
    async def remind(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("Check your DMs", ephemeral=True)
        dm = await interaction.user.create_dm()
        sent = await dm.send("Your reminder", file=discord.File(io.BytesIO(b"note"), "note.txt"))
        more = discord.File(io.BytesIO(b"more"), "more.txt")
        added = await sent.edit(attachments=[*sent.attachments, more])
        edited = await added.edit(content="Your reminder (edited)")
        bare = await edited.edit(attachments=[])
        async with dm.typing():
            reply = await dm.send("See above", reference=sent)
        fetched = await dm.fetch_message(sent.id)
        here = await interaction.client.fetch_channel(interaction.channel_id)
        there = await interaction.client.fetch_channel(dm.id)
        outcomes.set(
            "remind",
            {
                "channels": (type(here).__name__, type(there).__name__),
                "fetched": fetched.content,
                "channel": dm.id,
                "kept": [a.filename for a in edited.attachments],
                "after": len(bare.attachments),
                "reply_to": reply.reference and reply.reference.message_id,
            },
        )

    @tree.command(name="hello", description="Say hello in many ways")
    @app_commands.choices(
        tone=[
            app_commands.Choice(name="Warm", value="warm"),
            app_commands.Choice(name="Cool", value="cool"),
        ]
    )
    async def hello(
        interaction: discord.Interaction,
        tone: str,
        who: discord.Member | discord.Role,
        loud: bool = False,
        ratio: app_commands.Range[float, 0.0, 1.0] = 0.5,
    ) -> None:
        card = discord.File(io.BytesIO(b"hello card"), "card.txt")
        await interaction.response.send_message(f"{tone} hello to {who.mention}", file=card)
        extra = await interaction.followup.send("and one more thing", wait=True)
        original = await interaction.original_response()
        await interaction.delete_original_response()
        outcomes.set(
            f"hello:{interaction.id}",
            {
                "who": type(who).__name__,
                "loud": loud,
                "ratio": ratio,
                "original": (original.content, [a.filename for a in original.attachments]),
                "extra": extra.id,
            },
        )

    @tree.command(name="think", description="Think, then answer with a follow-up")
    async def think(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True, ephemeral=True)
        answer = await interaction.followup.send("Thought about it", wait=True)
        outcomes.set("think", answer.id)

    @tree.command(name="counter", description="A message with a counter button")
    async def counter(interaction: discord.Interaction) -> None:
        await interaction.response.send_message("Count: 0", view=CounterView())

    @tree.command(name="slow", description="Answer too late")
    async def slow(interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        await release.wait()
        try:
            await interaction.edit_original_response(content="late")
        except discord.HTTPException as exc:
            outcomes.set("slow", (exc.status, exc.code))


class Bot(discord.Client):
    def __init__(self) -> None:
        # No GUILD_CREATE ever comes, so on_ready waits out guild_ready_timeout (2 s by default).
        super().__init__(intents=discord.Intents.none(), guild_ready_timeout=0)
        self.tree: app_commands.CommandTree[Bot] = app_commands.CommandTree(self)
        self.outcomes = Outcomes()
        self.release = asyncio.Event()
        install_commands(self.tree, self.outcomes, self.release)

    async def setup_hook(self) -> None:
        self.add_dynamic_items(VoteButton)


class ShardedBot(discord.AutoShardedClient):
    def __init__(self, shard_count: int | None) -> None:
        super().__init__(
            intents=discord.Intents.none(), shard_count=shard_count, guild_ready_timeout=0
        )
        self.tree: app_commands.CommandTree[ShardedBot] = app_commands.CommandTree(self)
        self.outcomes = Outcomes()
        install_commands(self.tree, self.outcomes, asyncio.Event())

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """discord.py sleeps 5 s before every IDENTIFY but the first; there is nothing to pace."""


@asynccontextmanager
async def running(
    client: discord.Client, fake: FakeDiscord, shards: int = 1
) -> AsyncIterator[None]:
    await client.login(fake.token)
    task = asyncio.create_task(client.connect())
    try:
        await fake.wait_ready(shards)
        yield
    finally:
        await client.close()
        await asyncio.wait_for(task, 10)


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_discord_warnings(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Every payload must parse in discord.py without it logging a warning or an error."""
    caplog.set_level(logging.INFO, logger="discord")
    yield
    noisy = [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("discord") and record.levelno >= logging.WARNING
    ]
    assert [text for text in noisy if not any(ok in text for ok in CONFIG_WARNINGS)] == []


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord() as fake:
        monkeypatch.setattr(discord.http.Route, "BASE", fake.api_base)
        monkeypatch.setattr(
            discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(fake.gateway_url)
        )
        yield fake
        assert fake.unhandled == []


@pytest.fixture
async def bot(fake: FakeDiscord) -> AsyncIterator[Bot]:
    client = Bot()
    async with running(client, fake):
        synced = await client.tree.sync()
        assert [str(command.id) for command in synced] == [c["id"] for c in fake.commands]
        yield client


async def download(url: str) -> bytes:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200
        return await response.read()


# -- tests -----------------------------------------------------------------------------------


async def test_startup_logs_in_identifies_and_registers_commands(
    fake: FakeDiscord, bot: Bot
) -> None:
    assert fake.requests[:3] == [
        ("GET", "/users/@me"),
        ("GET", "/oauth2/applications/@me"),
        ("PUT", f"/applications/{fake.application_id}/commands"),
    ]
    await asyncio.wait_for(bot.wait_until_ready(), 5)  # on_ready has fired
    assert bot.latency < 5  # the first heartbeat was acknowledged
    assert bot.user is not None and bot.user.id == fake.bot_user_id
    assert bot.application_id == fake.application_id
    [session] = fake.sessions
    assert session.identify["token"] == fake.token and not session.closed
    assert session.identify["intents"] == 0
    by_name = {command["name"]: command for command in fake.commands}
    assert sorted(by_name) == [
        "admin",
        "counter",
        "headshot",
        "hello",
        "ping",
        "poll",
        "remind",
        "slow",
        "think",
    ]
    assert by_name["admin"]["default_member_permissions"] == "8"
    assert by_name["admin"]["dm_permission"] is False

    again = await bot.tree.sync()  # an overwrite keeps the ids, like Discord's
    assert sorted(str(command.id) for command in again) == sorted(c["id"] for c in by_name.values())


async def test_slash_command_with_attachment_defers_and_edits_twice(
    fake: FakeDiscord, bot: Bot
) -> None:
    selfie = fake.upload(b"\xff\xd8 a face \xff\xd9", "selfie.jpg", "image/jpeg")

    interaction = await fake.run_command(
        "headshot", {"selfie": selfie, "count": 3}, user_id=USER, guild_id=GUILD
    )
    seen = await bot.outcomes.get("headshot")

    message = interaction.original
    assert message is not None
    assert interaction.callback_type == 5 and not interaction.ephemeral
    assert interaction.acked_at is not None and interaction.acked_at - interaction.sent_at < 1
    assert seen["thinking"] is True and seen["message"] == message.id
    assert seen["limit"] == fake.attachment_size_limit
    assert [version["content"] for version in message.edits] == [
        "",
        f"Working on 3 from selfie.jpg ({len(selfie.data)} bytes)",
        "Done!",
    ]
    assert [version["filenames"] for version in message.edits] == [[], [], ["headshot.png"]]
    assert not message.loading and message.interaction_id == interaction.id
    [result] = message.files
    assert (result.filename, result.data, result.content_type) == (
        "headshot.png",
        selfie.data[::-1],
        "image/png",
    )
    [embed] = message.embeds
    assert embed["title"] == "Your headshot"
    assert embed["image"] == {"url": "attachment://headshot.png"}
    # Discord resolves attachment:// in what it returns; discord.py saw the CDN link.
    assert seen["image"] == seen["attachment"] == result.url
    assert await download(result.url) == selfie.data[::-1]
    assert [(b["label"], b["custom_id"]) for b in message.buttons()] == [("Re-roll", "reroll:1")]
    assert fake.channel_messages(interaction.channel_id) == [message]
    webhook = f"/webhooks/{fake.application_id}/{interaction.token}/messages/@original"
    assert fake.requests.count(("PATCH", webhook)) == 2

    with pytest.raises(AssertionError, match=r"'count'.*not in \[1, 4\]"):
        await fake.run_command("headshot", {"selfie": selfie, "count": 5}, user_id=USER)
    with pytest.raises(AssertionError, match="'selfie' is required"):
        await fake.run_command("headshot", {"count": 2}, user_id=USER)
    with pytest.raises(AssertionError, match="not an Upload"):
        await fake.run_command("headshot", {"selfie": b"raw bytes"}, user_id=USER)


async def test_subcommand_group_with_a_user_option(fake: FakeDiscord, bot: Bot) -> None:
    interaction = await fake.run_command(
        "admin quota set", {"user": VOTER, "limit": 7}, user_id=USER, guild_id=GUILD, permissions=8
    )
    seen = await bot.outcomes.get("quota")
    await interaction.wait_acked()

    assert seen == {"member": True, "user": VOTER, "limit": 7, "admin": True, "guild": GUILD}
    assert interaction.callback_type == 4 and interaction.ephemeral
    assert interaction.original is not None
    assert interaction.original.content == f"<@{VOTER}> may make 7 a day"
    assert interaction.original.ephemeral
    options = interaction.payload["data"]["options"]
    assert options[0]["type"] == 2 and options[0]["options"][0]["type"] == 1

    bad_calls: list[tuple[str, dict[str, Any], int | None, str]] = [
        ("admin quota set", {"user": VOTER, "limit": 101}, GUILD, "not in"),
        ("admin quota set", {"user": VOTER, "limit": "7"}, GUILD, "'limit'"),
        ("admin quota set", {"user": VOTER, "limit": 1, "days": 2}, GUILD, "no option"),
        ("admin quota set", {"limit": 1}, GUILD, "'user' is required"),
        ("admin quota", {}, GUILD, "is a group"),
        ("admin quota reset", {}, GUILD, "no subcommand 'reset'"),
        ("admin quota set", {"user": VOTER, "limit": 1}, None, "guild-only"),
        ("nonsense", {}, GUILD, "not registered"),
    ]
    for path, options_given, guild_id, problem in bad_calls:
        with pytest.raises(AssertionError, match=problem):
            await fake.run_command(path, options_given, user_id=USER, guild_id=guild_id)
    assert len(fake.interactions) == 1


async def test_pressing_a_persistent_button(fake: FakeDiscord, bot: Bot) -> None:
    poll = await fake.run_command("poll", user_id=USER, guild_id=GUILD)
    await poll.wait_acked()
    message = poll.original
    assert message is not None
    assert [b["label"] for b in message.buttons()] == ["Vote yes", "Vote no"]

    vote = await fake.press(message, "Vote yes", user_id=VOTER)
    seen = await bot.outcomes.get("vote:yes")
    await fake.wait_for(lambda: len(vote.followups) == 1)

    assert vote.callback_type == 6 and vote.original is message
    assert vote.guild_id == GUILD and vote.channel_id == message.channel_id
    assert message.content == f"Last vote: yes by {VOTER}"
    [thanks] = vote.followups
    assert thanks.ephemeral and thanks.content == "Thanks for voting yes"
    assert seen == {"thanks": thanks.id, "flags": 64}

    forged = await fake.press_custom_id("vote:no", message, user_id=OTHER)
    await bot.outcomes.get("vote:no")
    await forged.wait_acked()
    assert [version["content"] for version in message.edits] == [
        "Cats or dogs?",
        f"Last vote: yes by {VOTER}",
        f"Last vote: no by {OTHER}",
    ]
    assert len(message.buttons()) == 2  # edits without a view keep the components

    with pytest.raises(AssertionError, match="0 buttons labelled 'Vote maybe'"):
        await fake.press(message, "Vote maybe", user_id=VOTER)
    with pytest.raises(AssertionError, match="only user"):
        await fake.press_custom_id("vote:yes", thanks, user_id=OTHER)


async def test_option_types_and_other_response_kinds(fake: FakeDiscord, bot: Bot) -> None:
    interaction = await fake.run_command(
        "hello",
        {"tone": "warm", "who": GUILD, "loud": True, "ratio": 0.25},
        user_id=USER,
        guild_id=GUILD,
    )
    seen = await bot.outcomes.get(f"hello:{interaction.id}")

    assert (seen["who"], seen["loud"], seen["ratio"]) == ("Role", True, 0.25)
    assert seen["original"] == (f"warm hello to <@&{GUILD}>", ["card.txt"])
    original = interaction.original
    assert original is not None and original.deleted and interaction.callback_type == 4
    assert [f.data for f in original.files] == [b"hello card"]
    [extra] = interaction.followups
    assert extra.id == seen["extra"] and extra.content == "and one more thing"
    assert fake.channel_messages(interaction.channel_id) == [extra]
    resolved = interaction.payload["data"]["resolved"]
    assert resolved["roles"][str(GUILD)]["name"] == "@everyone"

    member = await fake.run_command(
        "hello", {"tone": "cool", "who": VOTER}, user_id=USER, guild_id=GUILD
    )
    member_seen = await bot.outcomes.get(f"hello:{member.id}")
    assert (member_seen["who"], member_seen["loud"], member_seen["ratio"]) == ("Member", False, 0.5)
    assert set(member.payload["data"]["resolved"]) == {"users", "members"}
    with pytest.raises(AssertionError, match="not one of the choices"):
        await fake.run_command("hello", {"tone": "hot", "who": VOTER}, user_id=USER, guild_id=GUILD)

    thinking = await fake.run_command("think", user_id=USER, guild_id=GUILD)
    answer_id = await bot.outcomes.get("think")
    assert thinking.original is not None and thinking.original.id == answer_id
    assert thinking.original.content == "Thought about it" and thinking.original.ephemeral
    assert thinking.followups == []  # the first follow-up after a defer *is* the response

    counter = await fake.run_command("counter", user_id=USER, guild_id=GUILD)
    await counter.wait_acked()
    assert counter.original is not None
    rename = await fake.press(counter.original, "Rename", user_id=USER)
    await rename.wait_acked()
    assert rename.callback_type == 9 and rename.modal is not None
    assert rename.modal["title"] == "Rename the counter"
    add = await fake.press(counter.original, "Add one", user_id=USER)
    await add.wait_acked()
    assert add.callback_type == 7 and add.original is counter.original
    assert counter.original.content == "Count: 1" and counter.original.buttons() == []


async def test_dm_context_and_a_dm_the_bot_opens(fake: FakeDiscord, bot: Bot) -> None:
    in_dm = await fake.run_command("ping", user_id=USER)
    seen = await bot.outcomes.get(f"ping:{in_dm.id}")
    await in_dm.wait_acked()

    assert in_dm.guild_id is None and in_dm.payload["context"] == 1
    assert seen == {
        "guild": None,
        "dm": True,
        "bot_dm": True,
        "channel": in_dm.channel_id,
        "user": USER,
    }
    assert fake.dm_channel_of(USER) is None  # the user wrote first; the bot opened nothing

    reminder = await fake.run_command("remind", user_id=USER, guild_id=GUILD)
    seen = await bot.outcomes.get("remind")

    assert fake.dm_channel_of(USER) == seen["channel"] == in_dm.channel_id
    assert seen["kept"] == ["note.txt", "more.txt"] and seen["after"] == 0
    assert seen["fetched"] == "Your reminder (edited)"
    assert seen["channels"] == ("TextChannel", "DMChannel")
    pong, note, reply = fake.channel_messages(in_dm.channel_id)
    assert pong is in_dm.original and pong.content == "pong"
    assert note.content == "Your reminder (edited)" and note.files == []
    assert [version["filenames"] for version in note.edits] == [
        ["note.txt"],
        ["note.txt", "more.txt"],  # the listed attachment kept, the new file added
        ["note.txt", "more.txt"],  # no attachments key: files untouched
        [],
    ]
    assert seen["reply_to"] == note.id and reply.message_reference is not None
    assert reply.message_reference["message_id"] == str(note.id)
    assert note.interaction_id is None and note.author_id == fake.bot_user_id
    assert reminder.original is not None and reminder.original.ephemeral


async def test_expired_interaction_tokens_are_refused(fake: FakeDiscord, bot: Bot) -> None:
    interaction = await fake.run_command("slow", user_id=USER, guild_id=GUILD)
    await interaction.wait_acked()

    fake.token_lifetime = 0.05
    await asyncio.sleep(max(0.0, interaction.sent_at + 0.06 - time.monotonic()))
    bot.release.set()

    assert await bot.outcomes.get("slow") == (401, 50027)
    assert interaction.original is not None and interaction.original.loading
    async with aiohttp.ClientSession() as session:
        url = f"{fake.api_base}/webhooks/{fake.application_id}/{interaction.token}"
        async with session.post(url, json={"content": "late"}) as response:
            assert response.status == 401
            assert await response.json() == {"message": "Invalid Webhook Token", "code": 50027}


@pytest.mark.parametrize("shard_count", [2, None], ids=["fixed", "recommended"])
async def test_shards_get_their_own_guilds(fake: FakeDiscord, shard_count: int | None) -> None:
    fake.recommended_shards = 2
    client = ShardedBot(shard_count)
    async with running(client, fake, shards=2):
        await client.tree.sync()
        assert sorted(s.identify["shard"] for s in fake.sessions) == [[0, 2], [1, 2]]
        asks_gateway = ("GET", "/gateway/bot") in fake.requests
        assert asks_gateway is (shard_count is None)
        await asyncio.wait_for(client.wait_until_ready(), 5)

        even = await fake.run_command("ping", user_id=USER, guild_id=GUILD)
        odd = await fake.run_command("ping", user_id=USER, guild_id=ODD_GUILD)
        dm = await fake.run_command("ping", user_id=USER)
        for interaction in (even, odd, dm):
            await interaction.wait_acked()
            seen = await client.outcomes.get(f"ping:{interaction.id}")
            assert seen["guild"] == interaction.guild_id

        assert (even.shard_id, odd.shard_id, dm.shard_id) == (0, 1, 0)
        by_shard = {session.shard_id: session for session in fake.sessions}
        assert [str(odd.id) in frame for frame in by_shard[1].frames] == [False, True]
        assert sum(str(even.id) in frame for frame in by_shard[0].frames) == 1


async def test_a_dropped_gateway_resumes_and_replays(fake: FakeDiscord, bot: Bot) -> None:
    [session] = fake.sessions

    await fake.drop_connections()
    assert session.closed
    during = await fake.run_command("ping", user_id=USER, guild_id=GUILD)
    await during.wait_acked()
    await fake.wait_ready()

    assert len(fake.sessions) == 1 and session.resumes == 1 and not session.closed
    after = await fake.run_command("ping", user_id=USER, guild_id=GUILD)
    await after.wait_acked()


async def test_wait_for_explains_a_timeout(fake: FakeDiscord, bot: Bot) -> None:
    interaction = await fake.run_command("slow", user_id=USER, guild_id=GUILD)
    await interaction.wait_acked()

    with pytest.raises(
        TimeoutError, match=r"(?s)interaction.original.content == .late.*1 interactions"
    ):
        await fake.wait_for(lambda: interaction.original.content == "late", timeout=0.05)  # type: ignore[union-attr]
    original = interaction.original
    assert original is not None and original.loading
    bot.release.set()
    await fake.wait_for(lambda: not original.loading)
    assert original.content == "late"


async def test_rest_errors_look_like_discords(fake: FakeDiscord, bot: Bot) -> None:
    ping = await fake.run_command("ping", user_id=USER, guild_id=GUILD)
    await ping.wait_acked()
    assert ping.original is not None
    callback = f"{fake.api_base}/interactions/{ping.id}/{ping.token}/callback"
    channel = f"{fake.api_base}/channels/{ping.channel_id}/messages"
    auth = {"Authorization": f"Bot {fake.token}"}

    async with aiohttp.ClientSession() as session:

        async def call(method: str, url: str, **kwargs: Any) -> tuple[int, Any]:
            async with session.request(method, url, **kwargs) as response:
                return response.status, await response.json()

        assert await call("POST", callback, json={"type": 4, "data": {"content": "again"}}) == (
            400,
            {"message": "Interaction has already been acknowledged.", "code": 40060},
        )
        unknown = f"{fake.api_base}/interactions/1/{ping.token}/callback"
        assert (await call("POST", unknown, json={"type": 5}))[1]["code"] == 10062
        assert await call("GET", f"{fake.api_base}/users/@me") == (
            401,
            {"message": "401: Unauthorized", "code": 0},
        )
        status, body = await call("POST", channel, json={"content": "x" * 2001}, headers=auth)
        assert (status, body["code"], list(body["errors"])) == (400, 50035, ["content"])
        status, body = await call("POST", channel, json={"content": ""}, headers=auth)
        assert (status, body["code"]) == (400, 50006)
        status, body = await call("GET", f"{fake.api_base}/guilds/1/roles", headers=auth)
        assert (status, body) == (404, {"message": "404: Not Found", "code": 0})

    assert fake.unhandled == [("GET", "/guilds/1/roles")]
    fake.unhandled.clear()

    stranger = discord.Client(intents=discord.Intents.none())
    with pytest.raises(discord.LoginFailure):
        await stranger.login("not-the-token")
    await stranger.close()


async def test_identify_with_a_wrong_token_is_closed_with_4004(fake: FakeDiscord) -> None:
    client = Bot()
    await client.login(fake.token)
    fake.token = "rotated"

    with pytest.raises(discord.ConnectionClosed) as closed:
        await client.connect(reconnect=False)

    assert closed.value.code == 4004
    assert fake.sessions == []
    await client.close()
