"""`GET /metrics`: Prometheus' text format, on the web server or on a port of its own
(METRICS_PORT), behind a bearer token when METRICS_TOKEN is set."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from bot.metrics.sink import Metrics, ServiceFigures

FiguresSource = Callable[[], Awaitable[ServiceFigures]]


class MetricsPage:
    def __init__(self, metrics: Metrics, figures: FiguresSource, *, token: str | None) -> None:
        self._metrics = metrics
        self._figures = figures
        self._expected = f"Bearer {token}".encode() if token else None

    async def handle(self, request: web.Request) -> web.Response:
        if self._expected is not None:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, self._expected):
                raise web.HTTPUnauthorized(
                    text="a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
                )
        body = self._metrics.exposition(await self._figures())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def metrics_app(page: MetricsPage) -> web.Application:
    """The web application of METRICS_PORT: `/metrics` alone."""
    app = web.Application()
    app.router.add_get("/metrics", page.handle)
    return app
