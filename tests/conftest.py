"""Shared fixtures: a real simulator over HTTP, the wired service on a SQLite file, and the
ledger invariant, checked after every test that touched a database."""

from __future__ import annotations

import io
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
from bot.engine import EngineTimings
from bot.fetch import SafeFetcher
from bot.rehost import RetryPolicy
from storage.database import Database
from storage.ledger import violations
from storage.migrate import upgrade

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_SELFIE = ROOT / "examples" / "astronaut.jpg"
TEST_KEY = "sk-test-4f9c2e7d1b8a6035"
FAST = EngineTimings(
    min_poll_seconds=0.05,
    max_poll_seconds=0.5,
    job_timeout_seconds=30,
    retry=RetryPolicy(base_seconds=0.01, cap_seconds=0.1),
)

_databases: list[str] = []

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
    for url in _databases:
        db = Database(url)
        try:
            async with db.read() as connection:
                problems = await violations(connection)
        finally:
            await db.dispose()
        assert problems == [], f"ledger invariant broken in {url}: {problems}"


def db_file(tmp_path: Path) -> Path:
    return tmp_path / "test.db"


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    """A migrated SQLite file whose ledger is checked after the test."""
    url = f"sqlite+aiosqlite:///{db_file(tmp_path)}"
    await upgrade(url)
    register_database(url)
    database = Database(url)
    yield database
    await database.dispose()


@pytest.fixture
async def simulator() -> AsyncIterator[Simulator]:
    sim = Simulator(SimulatorConfig(api_keys=frozenset({TEST_KEY})))
    await sim.start()
    yield sim
    await sim.stop()


AppFactory = Callable[..., Awaitable[HeadshotApp]]


@pytest.fixture
async def make_app(tmp_path: Path, simulator: Simulator) -> AsyncIterator[AppFactory]:
    """Start the whole service against the simulator; every app started is stopped after."""
    async with AsyncExitStack() as stack:

        async def factory(
            *,
            local_webhooks: bool = True,
            timings: EngineTimings = FAST,
            fetcher: SafeFetcher | None = None,
            **settings: Any,
        ) -> HeadshotApp:
            data_dir = tmp_path / "data"
            values: dict[str, Any] = {
                "data_dir": data_dir,
                "database_url": f"sqlite+aiosqlite:///{data_dir / 'headshot.db'}",
                "modelslab_base_url": simulator.base_url,
                "modelslab_api_key": TEST_KEY,
                "web_port": 0,
                # Selfies go when their job ends unless a test wants re-rolls.
                "selfie_retention_seconds": 0,
                **settings,
            }
            overrides = Overrides(timings=timings, local_webhooks=local_webhooks, fetcher=fetcher)
            app = HeadshotApp(load_settings(**values), overrides)
            await stack.enter_async_context(app)
            register_database(values["database_url"])
            return app

        yield factory
