"""`/healthz` (alive) and `/readyz` (ready), what a supervisor and a load balancer ask each
replica: alive while the process answers; ready while its database can be written and its chat
gateways are connected; a generator outage is "degraded" and leaves it ready."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from bot.health import ProviderHealth, Readiness
from bot.metrics import Metrics
from storage.database import Database
from storage.health import WriteProbe
from tests.cluster import free_port
from tests.conftest import AppFactory


async def _get(url: str, **headers: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
        return answer.status, await answer.json()


async def test_alive_and_ready_with_its_database(make_app: AppFactory) -> None:
    app = await make_app()
    status, body = await _get(f"{app.base_url}/healthz")
    assert (status, body) == (200, {"alive": True, "active_jobs": 0})
    status, body = await _get(f"{app.base_url}/readyz")
    assert status == 200
    assert body == {
        "ready": True,
        "database": "writable",
        "gateways": {},
        "generator": {"state": "ok"},
    }


async def test_a_read_only_database_makes_it_unready_and_then_ready_again(
    make_app: AppFactory, database_url: str
) -> None:
    app = await make_app()
    async with _read_only(database_url):
        status, body = await _get(f"{app.base_url}/readyz")
        assert (status, body["ready"], body["database"]) == (503, False, "not writable")
        # Alive all the same: restarting it would not make the database writable.
        assert (await _get(f"{app.base_url}/healthz"))[0] == 200
    status, body = await _get(f"{app.base_url}/readyz")
    assert (status, body["database"]) == (200, "writable")


@contextlib.asynccontextmanager
async def _read_only(database_url: str) -> AsyncIterator[None]:
    """SQLite: the file made read-only. PostgreSQL: `default_transaction_read_only` for every
    new session of the database."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        path = Path(url.database or "")
        _read_only_file(path, True)
        try:
            yield
        finally:
            _read_only_file(path, False)
        return
    admin = Database(database_url)
    switch = 'ALTER DATABASE "{}" SET default_transaction_read_only = {}'
    try:
        async with admin.engine.connect() as conn:
            await conn.execute(text(switch.format(url.database, "on")))
            await conn.commit()
        yield
    finally:
        async with admin.engine.connect() as conn:
            await conn.execute(text(switch.format(url.database, "off")))
            await conn.commit()
        await admin.dispose()


def _read_only_file(path: Path, read_only: bool) -> None:
    """Root writes through a file's mode, so as root the file is made immutable instead
    (ext4's attribute, `chattr`)."""
    if os.geteuid() != 0:
        path.chmod(0o444 if read_only else 0o644)
        return
    subprocess.run(["chattr", "+i" if read_only else "-i", str(path)], check=True)


async def test_a_database_out_of_reach_makes_it_unready() -> None:
    gone = Database(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/gone")
    probe = WriteProbe(gone)
    try:
        readiness = Readiness(database_writable=probe.check, provider=ProviderHealth(Metrics()))
        report = await readiness.check()
    finally:
        await probe.aclose()
        await gone.dispose()
    assert not report.ready
    assert report.body["database"] == "not writable"


async def test_metrics_are_scraped_while_the_queue_cannot_be_read(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = await make_app()

    async def unreachable() -> int:
        raise OSError("connection refused")

    # The database going away mid-run is what this stands for: only the read that fails.
    monkeypatch.setattr(app.engine.dispatcher, "waiting_count", unreachable)
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{app.base_url}/metrics") as answer,
    ):
        status, scraped = answer.status, await answer.text()
    assert status == 200
    assert "headshot_queue_depth NaN" in scraped
    assert "headshot_active_jobs 0.0" in scraped
    assert 'headshot_jobs_queued_total{operation="headshot"} 0.0' in scraped
