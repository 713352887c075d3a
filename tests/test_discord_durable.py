"""Discord interactions left "thinking…" by a process that died: a real `headshot-bot run` is
SIGKILLed while answering a slash command, and the next process on the database ends the
interaction: with an apology if no job was queued, or with the job it queued, whose result
then comes in the channel. The real discord.py against the fake Discord, on a real database."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import discord
import pytest
from aiohttp import web

from backends.modelslab.simulator import Simulator
from bot import replies
from tests.conftest import FAST, TEST_KEY, make_image
from tests.databases import query
from tests.fake_discord import FakeDiscord
from tests.test_discord import ALICE, GUILD, World, is_result, posted

# A dead process's interactions are taken over this soon.
QUICK = dataclasses.replace(FAST, lease_seconds=1.0)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FirstCallHangs:
    """A route of the fake whose first request never gets an answer (its process dies waiting);
    the later ones are answered as usual."""

    def __init__(self, fake: FakeDiscord, handler: Handler) -> None:
        self._fake = fake
        self._handler = handler
        self.calls = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.calls += 1
        self._fake._changed()
        if self.calls == 1:
            await asyncio.Event().wait()
        return await self._handler(request)


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    gateway = discord.gateway.DiscordWebSocket
    monkeypatch.setattr(gateway, "DEFAULT_GATEWAY", gateway.DEFAULT_GATEWAY)
    server = FakeDiscord()  # started by the test, once it has chosen which route hangs
    yield server
    await server.stop()
    assert server.unhandled == []


async def run_service(
    fake: FakeDiscord, tmp_path: Path, database_url: str, simulator: Simulator
) -> Any:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSLAB_", "DISCORD_"))}
    env = {
        **clean,
        "DATA_DIR": str(tmp_path / "data"),
        "DATABASE_URL": database_url,
        "IMAGE_STORE_SHARED": "1",
        "WEB_PORT": "0",
        "MODELSLAB_BASE_URL": simulator.base_url,
        "MODELSLAB_API_KEY": TEST_KEY,
        "JOB_LEASE_SECONDS": "2",
        "DISCORD_TOKEN": fake.token,
        "DISCORD_API_BASE": fake.api_base,
        "DISCORD_GATEWAY_URL": fake.gateway_url,
    }
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "run",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )


@pytest.mark.parametrize("dies_while", ["downloading", "answering"])
async def test_an_interaction_left_thinking_by_a_dead_process_is_ended_by_the_next(
    tmp_path: Path,
    fake: FakeDiscord,
    simulator: Simulator,
    database_url: str,
    dies_while: str,
) -> None:
    # The selfie's download (no job yet), or the answer that the job is queued (a job made).
    hanging = FirstCallHangs(
        fake, fake._get_cdn_file if dies_while == "downloading" else fake._patch_webhook_message
    )
    if dies_while == "downloading":
        fake._get_cdn_file = hanging.handle  # type: ignore[method-assign]
    else:
        fake._patch_webhook_message = hanging.handle  # type: ignore[method-assign]
    await fake.start()

    process = await run_service(fake, tmp_path, database_url, simulator)
    try:
        await fake.wait_ready(timeout=60)
        await fake.wait_for(lambda: bool(fake.commands), timeout=30)
        selfie = fake.upload(make_image(), "me.png", "image/png")
        interaction = await fake.run_command(
            "headshot", {"selfie": selfie, "style": "studio"}, user_id=ALICE, guild_id=GUILD
        )
        await interaction.wait_acked(timeout=30)
        await fake.wait_for(lambda: hanging.calls == 1, timeout=30)
    finally:
        process.send_signal(signal.SIGKILL)
        _, stderr = await process.communicate()
    assert process.returncode == -signal.SIGKILL, stderr.decode()
    assert interaction.original is not None and interaction.original.loading  # "thinking…"
    (sealed,) = query(database_url, "SELECT sealed_token FROM deferred_interactions")[0]
    assert interaction.token not in str(sealed)
    jobs = query(database_url, "SELECT id FROM jobs")

    following = World(tmp_path, fake, simulator, database_url)
    following.timings = QUICK
    try:
        await following.start()
        original = interaction.original
        await fake.wait_for(lambda: not original.loading, timeout=30)
        if dies_while == "downloading":
            assert jobs == []
            assert original.content == replies.request_lost()
        else:
            ((job_id,),) = jobs
            assert original.content == replies.request_resumed(job_id)
            await fake.wait_for(lambda: bool(posted(fake, interaction.channel_id)), timeout=30)
            (result,) = posted(fake, interaction.channel_id)
            assert is_result(result) and result.content.startswith(f"<@{ALICE}>")
            await following.no_deliveries_owed()
        async with asyncio.timeout(10):  # the note goes just after the edit
            while await following.rows("deferred_interactions"):
                await asyncio.sleep(0.02)
        assert await following.rows("jobs") == len(jobs)
    finally:
        await following.stop()
