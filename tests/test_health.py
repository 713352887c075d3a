"""`GET /healthz`, what a load balancer asks each replica: up, and able to reach the database."""

from __future__ import annotations

import aiohttp
from aiohttp import web

from bot.web import ChatWebhooks, create_web_app
from storage.database import Database
from storage.jobs import JobRepository
from tests.cluster import free_port
from tests.conftest import AppFactory


async def _health(app: web.Application) -> tuple[int, dict[str, object]]:
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/healthz") as answer,
        ):
            return answer.status, await answer.json()
    finally:
        await runner.cleanup()


async def test_healthy_with_its_database_and_not_without(make_app: AppFactory) -> None:
    app = await make_app()
    status, body = await _health(create_web_app(app.engine, app.jobs, app.store, ChatWebhooks()))
    assert (status, body["ok"]) == (200, True)

    # The same replica, its database gone (nothing listens where it was): out of rotation.
    gone = Database(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/gone")
    try:
        lost = create_web_app(app.engine, JobRepository(gone), app.store, ChatWebhooks())
        status, body = await _health(lost)
    finally:
        await gone.dispose()
    assert (status, body) == (503, {"ok": False, "database": "unreachable"})
