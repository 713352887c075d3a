"""Shared fixtures: a real simulator over HTTP, the wired service on a real database, and the
ledger invariant, checked after every test that touched a database.

Every test that takes `database_url` (directly, or through `db` or `make_app`) runs twice: on a
SQLite file and on a real PostgreSQL server. That server is `TEST_POSTGRES_URL`'s, or else a
throw-away cluster this session starts from Debian's package (`tests/postgres.py`); a test that
cannot reach it fails.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from PIL import Image

from backends.modelslab.simulator import Simulator, SimulatorConfig
from bot.app import HeadshotApp, Overrides
from bot.config import load_settings
from bot.fetch import SafeFetcher
from bot.images import ImageWorkers, image_workers
from bot.jobs.engine import EngineTimings
from bot.jobs.rehost import RetryPolicy
from storage.database import Database
from storage.ledger import violations
from storage.migrate import upgrade
from tests.databases import KINDS, PostgresDatabases, sqlite_url
from tests.postgres import ENV as POSTGRES_ENV
from tests.postgres import running_server

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_SELFIE = ROOT / "examples" / "astronaut.jpg"
TEST_KEY = "sk-test-4f9c2e7d1b8a6035"
FAST = EngineTimings(
    min_poll_seconds=0.05,
    max_poll_seconds=0.5,
    job_timeout_seconds=30,
    retry=RetryPolicy(base_seconds=0.01, cap_seconds=0.1),
)

# Most tests send generated pictures with no face in them (a plain colour) and test something
# other than faces: the face check and the identity gate are off for them, here, explicitly, and
# for the services they start as processes (which inherit the environment). The tests of faces
# (test_faces, test_identity_gate, test_face_intake) turn them back on in their own fixtures.
# The defaults themselves stay on.
FACES_OFF = {"FACE_CHECK": "0", "IDENTITY_GATE": "0"}
os.environ.update(FACES_OFF)

_databases: list[str] = []
# Databases to drop once the test is over, after the ledger check has read them.
_throwaway: list[tuple[PostgresDatabases, str]] = []

# Machines here are shared and noisy: property tests check behaviour, never timing.
settings.register_profile(
    "shared-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("shared-machine")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and on a busy two-core machine OpenMP's spinning
    threads make each run ten times slower. Imports torch: only for the [local] tests."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def selfie() -> bytes:
    return EXAMPLE_SELFIE.read_bytes()


def make_image(size: tuple[int, int] = (256, 320), color: str = "tan", fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, fmt)
    return buffer.getvalue()


def register_database(url: str) -> None:
    """Have the ledger invariant checked on this database after the test."""
    _databases.append(url)


@pytest.fixture(autouse=True)
async def ledger_invariant() -> AsyncIterator[None]:
    _databases.clear()
    yield
    try:
        for url in _databases:
            db = Database(url)
            try:
                async with db.read() as connection:
                    problems = await violations(connection)
            finally:
                await db.dispose()
            assert problems == [], f"ledger invariant broken in {url}: {problems}"
    finally:
        while _throwaway:
            server, url = _throwaway.pop()
            server.drop(url)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresDatabases]:
    """The session's PostgreSQL server, as a maker of databases."""
    url = os.environ.get(POSTGRES_ENV)
    with contextlib.ExitStack() as stack:
        if not url:
            url = stack.enter_context(running_server())
        databases = PostgresDatabases(url)
        databases.make_template()
        yield databases


@pytest.fixture(params=KINDS)
def database_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def empty_database_url(
    database_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[str]:
    """A database with nothing in it yet (not migrated), of this test's kind."""
    if database_kind == "sqlite":
        (tmp_path / "data").mkdir(exist_ok=True)
        yield sqlite_url(tmp_path / "data" / "headshot.db")
        return
    postgres: PostgresDatabases = request.getfixturevalue("postgres")
    url = postgres.empty()
    _throwaway.append((postgres, url))
    yield url


@pytest.fixture
async def database_url(
    database_kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """A migrated database of this test's kind, whose ledger is checked after the test."""
    if database_kind == "sqlite":
        (tmp_path / "data").mkdir(exist_ok=True)
        url = sqlite_url(tmp_path / "data" / "headshot.db")
        await upgrade(url)
        register_database(url)
        yield url
        return
    postgres: PostgresDatabases = request.getfixturevalue("postgres")
    url = postgres.migrated()
    _throwaway.append((postgres, url))
    register_database(url)
    yield url


@pytest.fixture
def postgres_url(postgres: PostgresDatabases) -> Iterator[str]:
    """A migrated PostgreSQL database, for what only PostgreSQL has (advisory locks, LISTEN)."""
    url = postgres.migrated()
    _throwaway.append((postgres, url))
    yield url


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Database]:
    """The migrated database of this test's kind, opened."""
    database = Database(database_url)
    yield database
    await database.dispose()


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    sim = Simulator(SimulatorConfig(api_keys=frozenset({TEST_KEY})))
    await sim.start()
    yield sim
    await sim.stop()


AppFactory = Callable[..., Awaitable[HeadshotApp]]


def shared_image_workers() -> ImageWorkers:
    """The session's decode workers: each app a test starts would otherwise start two Python
    processes of its own, which on two cores costs the suite many minutes."""
    return image_workers()


def _sets_image_workers(settings: dict[str, Any]) -> bool:
    """A test that sets the workers' settings gets a pool of its own, made from them."""
    return any(name.startswith("image_") for name in settings)


@pytest.fixture
async def make_app(
    tmp_path: Path, simulator: Simulator, database_url: str
) -> AsyncIterator[AppFactory]:
    """Start the whole service against the simulator; every app started is stopped after."""
    async with AsyncExitStack() as stack:

        async def factory(
            *,
            local_webhooks: bool = True,
            timings: EngineTimings = FAST,
            fetcher: SafeFetcher | None = None,
            service: bool = True,
            **settings: Any,
        ) -> HeadshotApp:
            data_dir = tmp_path / "data"
            values: dict[str, Any] = {
                "data_dir": data_dir,
                "database_url": database_url,
                "modelslab_base_url": simulator.base_url,
                "modelslab_api_key": TEST_KEY,
                "image_store_shared": True,
                "web_port": 0,
                # Selfies go when their job ends unless a test wants re-rolls.
                "selfie_retention_seconds": 0,
                **settings,
            }
            overrides = Overrides(
                timings=timings,
                local_webhooks=local_webhooks,
                fetcher=fetcher,
                images=None if _sets_image_workers(settings) else shared_image_workers(),
            )
            app = HeadshotApp(load_settings(**values), overrides, service=service)
            await stack.enter_async_context(app)
            return app

        yield factory


@pytest.fixture
async def discord_world(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, simulator: Simulator, database_url: str
) -> AsyncIterator[Any]:
    """The fake Discord, the simulator, the service and its Discord adapter (tests.test_discord's
    `World`, not started: `await discord_world.start(**settings)`)."""
    import discord

    from tests.fake_discord import FakeDiscord
    from tests.test_discord import World

    # The adapter points discord.py at the fake through two class attributes: restore them.
    monkeypatch.setattr(discord.http.Route, "BASE", discord.http.Route.BASE)
    gateway = discord.gateway.DiscordWebSocket
    monkeypatch.setattr(gateway, "DEFAULT_GATEWAY", gateway.DEFAULT_GATEWAY)
    async with FakeDiscord() as fake:
        running = World(tmp_path, fake, simulator, database_url)
        yield running
        await running.stop()
        assert fake.unhandled == []
