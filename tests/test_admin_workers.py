"""/admin workers: the owners see the GPU workers (the cluster's registry on PostgreSQL, the bot's
own child worker on one machine, none on ModelsLab alone); anyone else is refused and sees
nothing. Through the command layer, and once through the Discord adapter."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from pathlib import Path

import discord
import pytest
from sqlalchemy import text

from backends.local.backend import LocalBackend
from backends.modelslab.simulator import Simulator
from bot.app import HeadshotApp
from bot.fleet.view import FleetView, WorkerView
from bot.jobs.events import Completed
from bot.replies import MAX_LIST_CHARS, workers_list
from tests.chat import TestChat
from tests.conftest import AppFactory
from tests.fake_discord import FakeDiscord
from tests.test_discord import MOD, OWNER, World
from tests.test_discord import admin as discord_admin

G1_MOD = {"community": "guild-1", "moderator": True, "user": "mod"}
OWNER_DM = {"user": "root"}
OWNER_IN_G1 = {"community": "guild-1", "user": "root"}
REFUSAL = "Only the bot's owners can use /admin workers."
MODELSLAB_ONLY = "This bot has no GPU workers: it generates with ModelsLab."
FALLBACK = "Operations no live worker serves go to ModelsLab (FALLBACK_BACKEND)."


def with_fleet(app: HeadshotApp, fleet: FleetView | None) -> TestChat:
    """The app's command layer, seeing `fleet`."""
    app.commands.services = dataclasses.replace(app.commands.services, fleet=fleet)
    return TestChat(app)


# ---- the cluster: the worker registry ----------------------------------------------------------


@pytest.mark.parametrize("database_kind", ["postgresql"])
async def test_an_owner_sees_every_worker_and_which_are_draining_or_gone(
    make_app: AppFactory,
) -> None:
    from storage.gpu_workers import WorkerRegistry

    # BACKEND=local on PostgreSQL: the fleet, with ModelsLab for what no live worker serves.
    app = await make_app(owner_ids="test:root", backend="local", fallback_backend="modelslab")
    registry = WorkerRegistry(app.db)
    fast = await registry.register(
        host="gpu-box-1", device="cuda:0", operations=("headshot", "facegen"), capacity=2
    )
    await registry.heartbeat(
        fast, jobs_done=12, jobs_failed=1, seconds_per_image=4.3, draining=False
    )
    fresh = await registry.register(
        host="gpu-box-2", device="cuda:1", operations=("avatar",), capacity=1
    )
    await registry.heartbeat(
        fresh, jobs_done=0, jobs_failed=0, seconds_per_image=None, draining=False
    )
    leaving = await registry.register(
        host="gpu-box-3", device="cuda:0", operations=("headshot",), capacity=1
    )
    await registry.heartbeat(
        leaving, jobs_done=3, jobs_failed=0, seconds_per_image=5.0, draining=True
    )
    killed = await registry.register(
        host="gpu-box-4", device="cuda:0", operations=("avatar",), capacity=4
    )
    await registry.heartbeat(
        killed, jobs_done=7, jobs_failed=0, seconds_per_image=6.0, draining=False
    )
    async with app.db.write() as conn:  # its last heartbeat, 5 minutes back
        await conn.execute(
            text(
                "UPDATE gpu_workers SET heartbeat_at = heartbeat_at - interval '5 minutes' "
                "WHERE id = :id"
            ),
            {"id": killed},
        )
    chat = TestChat(app)
    refused = (await chat.send("/admin workers", **G1_MOD)).reply  # type: ignore[arg-type]
    assert refused.text == REFUSAL and refused.refused

    for where in (OWNER_DM, OWNER_IN_G1):
        shown = (await chat.send("/admin workers", **where)).reply
        assert shown.private and not shown.refused
        header, *lines, fallback = shown.text.splitlines()
        # The draining and the silent one are not counted: 3 slots, from the two live ones.
        assert header == "GPU workers: 2 live of 4, room for 3 jobs at once."
        assert fallback == FALLBACK
        assert len(lines) == 4
        heard = r" · last heartbeat \d+ sec ago"
        live = {line.split(" · ")[0]: line for line in lines[:2]}
        assert re.fullmatch(
            r"• gpu-box-1 · cuda:0 · headshot, facegen · 12 jobs done, 1 failed, 4\.3 sec/image"
            + heard,
            live["• gpu-box-1"],
        )
        assert re.fullmatch(
            r"• gpu-box-2 · cuda:1 · avatar · 0 jobs done, no images yet" + heard,
            live["• gpu-box-2"],
        )
        assert re.fullmatch(
            r"• gpu-box-3 · cuda:0 · headshot · 3 jobs done, 5 sec/image · "
            r"draining: finishing its jobs, last heartbeat \d+ sec ago",
            lines[2],
        )
        assert lines[3] == (
            "• gpu-box-4 · cuda:0 · avatar · 7 jobs done, 6 sec/image · not heard from for 5 min"
        )


@pytest.mark.parametrize("database_kind", ["sqlite"])
async def test_a_moderator_who_is_not_an_owner_is_refused_and_sees_nothing(
    make_app: AppFactory,
) -> None:
    app = await make_app(owner_ids="test:root")
    chat = TestChat(app)

    for where in (G1_MOD, {"user": "mod"}, {"community": "guild-1", "user": "alice"}):
        refused = (await chat.send("/admin workers", **where)).reply  # type: ignore[arg-type]
        assert refused.text == REFUSAL
        assert refused.refused and refused.private


@pytest.mark.parametrize("database_kind", ["sqlite"])
async def test_a_bot_on_modelslab_alone_says_it_has_no_gpu_workers(make_app: AppFactory) -> None:
    app = await make_app(owner_ids="test:root")
    chat = TestChat(app)
    assert (await chat.send("/admin workers", **OWNER_DM)).reply.text == MODELSLAB_ONLY
    # The same from a command layer given no view at all.
    chat = with_fleet(app, None)
    assert (await chat.send("/admin workers", **OWNER_DM)).reply.text == MODELSLAB_ONLY


# ---- one machine: the bot's own child worker ---------------------------------------------------


@pytest.mark.parametrize("database_kind", ["sqlite"])
async def test_an_owner_sees_the_single_machines_child_worker_and_its_figures(
    make_app: AppFactory, tmp_path_factory: pytest.TempPathFactory, simulator: Simulator
) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    from tests.test_local_backend import SMALL, generate, local_app
    from tests.tiny_models import sd15

    models = tmp_path_factory.mktemp("models")
    sd15.build(models)
    app = await make_app(
        owner_ids="test:root",
        **local_app(models, fallback_backend="modelslab", local_capacity=2),
    )
    child = app.backend.primary  # type: ignore[attr-defined]
    assert isinstance(child, LocalBackend)
    before = child.fleet_status()
    assert before.alive and before.jobs_done == 0 and before.seconds_per_image is None
    assert before.started_at is not None and before.last_finished_at is None

    made = await generate(app, samples=2, seed=5, **SMALL)
    assert isinstance(made, Completed), made

    status = child.fleet_status()
    assert (status.device, status.operations, status.capacity) == (
        "cpu",
        ("headshot", "facegen"),
        2,
    )
    assert (status.jobs_done, status.jobs_failed) == (1, 0)
    assert status.seconds_per_image is not None and status.seconds_per_image > 0
    assert status.last_finished_at is not None and status.last_finished_at >= status.started_at

    chat = TestChat(app)
    header, line, fallback = (await chat.send("/admin workers", **OWNER_DM)).reply.text.split("\n")
    assert header == "GPU workers: 1 live of 1, room for 2 jobs at once."
    assert re.fullmatch(
        r"• \S+ · cpu · headshot, facegen · 1 job done, \d+(\.\d)? sec/image · "
        r"the bot's own process, last job \d+ sec ago",
        line,
    )
    assert fallback == FALLBACK

    await child.aclose()  # the bot's process stops its child with it
    stopped = (await chat.send("/admin workers", **OWNER_DM)).reply.text
    assert stopped.startswith("GPU workers: 0 live of 1, room for 0 jobs at once.\n")
    assert "the bot's own process, stopped (it starts again with the next job)" in stopped


# ---- what fits one message ---------------------------------------------------------------------


def worker(number: int, **changes: object) -> WorkerView:
    view = WorkerView(
        host=f"gpu-machine-{number:04d}.datacentre.example.org",
        device="cuda:7",
        operations=("headshot", "facegen", "avatar", "flux_headshot"),
        capacity=4,
        jobs_done=123456,
        jobs_failed=789,
        seconds_per_image=12.3,
        heartbeat_age=4.0,
        draining=False,
        live=True,
    )
    return dataclasses.replace(view, **changes)  # type: ignore[arg-type]


def test_a_long_fleet_is_cut_to_fit_one_message_and_says_how_many_more() -> None:
    fleet = [worker(n) for n in range(200)] + [worker(999, live=False, silent=True)]
    text_ = workers_list(fleet, "modelslab").text
    header, *lines = text_.splitlines()

    assert len(text_) <= MAX_LIST_CHARS < 2000
    assert header == "GPU workers: 200 live of 201, room for 800 jobs at once."
    assert lines[-1] == FALLBACK
    more = re.fullmatch(r"• and (\d+) more", lines[-2])
    assert more is not None
    shown = lines[:-2]
    assert len(shown) + int(more.group(1)) == len(fleet)
    assert all(line.startswith("• gpu-machine-") for line in shown)
    assert "gpu-machine-0999" not in text_  # the dead one goes last, so it is the one cut


def test_a_worker_cannot_stretch_its_line_with_a_long_host_name() -> None:
    line = workers_list([worker(1, host="h" * 500, device="d" * 300)], None).text.splitlines()[1]
    assert len(line) < 250
    assert "h" * 47 + "…" in line and "d" * 47 + "…" in line


def test_a_cluster_without_workers_yet_says_how_to_add_one() -> None:
    assert workers_list([], None).text == (
        "No GPU worker has reported in yet: start one with `headshot-bot gpu-worker` "
        "(README: “Adding a GPU machine”)."
    )


# ---- through a real adapter: Discord -----------------------------------------------------------


@pytest.fixture
async def fake(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    gateway = discord.gateway.DiscordWebSocket
    monkeypatch.setattr(gateway, "DEFAULT_GATEWAY", gateway.DEFAULT_GATEWAY)
    async with FakeDiscord() as server:
        yield server
        assert server.unhandled == []


@pytest.mark.parametrize("database_kind", ["sqlite"])
async def test_discord_registers_admin_workers_and_answers_only_an_owner(
    tmp_path: Path, fake: FakeDiscord, simulator: Simulator, database_url: str
) -> None:
    world = World(tmp_path, fake, simulator, database_url)
    try:
        await world.start()
        admin = next(c for c in fake.commands if c["name"] == "admin")
        sub = {option["name"]: option for option in admin["options"]}
        assert sub["workers"]["type"] == 1 and not sub["workers"].get("options")

        # The owner needs no Manage Server: the command layer knows the owners.
        answer = await discord_admin(world, "admin workers", user_id=OWNER, permissions=0)
        assert answer == MODELSLAB_ONLY
        refused = await discord_admin(world, "admin workers", user_id=MOD)
        assert refused == REFUSAL
    finally:
        await world.stop()
