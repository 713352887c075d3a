"""Our aiohttp server: ModelsLab webhooks, chat platforms' webhooks, the re-hosted images,
liveness (`/healthz`), readiness (`/readyz`) and, unless on a port of their own, `/metrics`."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from bot.health import Readiness
from bot.jobs.engine import JobEngine
from bot.log_context import job_context
from bot.metrics.endpoint import MetricsPage
from bot.tokens import token_hash
from storage.imagestore import ImageNotFound, ImageStore
from storage.jobs import JobRepository

log = logging.getLogger(__name__)

MAX_WEBHOOK_BYTES = 64 * 1024
# A chat platform's update can be larger than a provider's webhook (Telegram: a long message
# replying to another, with entities); the provider's route checks its own cap.
MAX_REQUEST_BYTES = 1024 * 1024
ENGINE_KEY = web.AppKey("engine", JobEngine)
JOBS_KEY = web.AppKey("jobs", JobRepository)
STORE_KEY = web.AppKey("store", ImageStore)
READINESS_KEY = web.AppKey("readiness", Readiness)

ChatWebhook = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ChatWebhooks:
    """Where chat platforms that push updates over HTTP (Telegram's webhook mode) are received:
    `POST /webhooks/<platform>`. Adapters start after the server, when aiohttp's router no longer
    takes routes, so they mount their handler here instead."""

    def __init__(self) -> None:
        self._handlers: dict[str, ChatWebhook] = {}
        self._expected: set[str] = set()

    def expect(self, platform: str) -> None:
        """`platform`'s updates will be received here once its adapter has started: until then
        (and once it stops) they are answered 503, so that the platform (or the load balancer)
        sends them again, rather than 404, a refusal."""
        self._expected.add(platform)

    def mount(self, platform: str, handler: ChatWebhook) -> str:
        """Receive `platform`'s updates with `handler`; returns the path they are posted to."""
        if platform == "modelslab" or not platform.isidentifier():
            raise ValueError(f"not a platform name for a webhook: {platform!r}")
        self._handlers[platform] = handler
        return f"/webhooks/{platform}"

    def unmount(self, platform: str) -> None:
        self._handlers.pop(platform, None)

    async def receive(self, request: web.Request) -> web.StreamResponse:
        platform = request.match_info["platform"]
        handler = self._handlers.get(platform)
        if handler is None:
            if platform in self._expected:
                raise web.HTTPServiceUnavailable(
                    text="not receiving yet; try again", headers={"Retry-After": "1"}
                )
            raise web.HTTPNotFound()
        return await handler(request)


def create_web_app(
    engine: JobEngine,
    jobs: JobRepository,
    store: ImageStore,
    chats: ChatWebhooks,
    readiness: Readiness,
    *,
    metrics: MetricsPage | None = None,
) -> web.Application:
    """`metrics`: the page served at `/metrics` here (None: off, or on METRICS_PORT)."""
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)
    app[ENGINE_KEY] = engine
    app[JOBS_KEY] = jobs
    app[STORE_KEY] = store
    app[READINESS_KEY] = readiness
    app.router.add_post("/webhooks/modelslab/{token}", modelslab_webhook)
    app.router.add_post("/webhooks/{platform}", chats.receive)
    app.router.add_get("/images/{token}", image)
    app.router.add_get("/healthz", alive)
    app.router.add_get("/readyz", ready)
    if metrics is not None:
        app.router.add_get("/metrics", metrics.handle)
    return app


async def modelslab_webhook(request: web.Request) -> web.Response:
    """A hint that a job has ended. The body proves nothing: the engine confirms through fetch.

    A token that belongs to no unfinished job (unknown, forged, or its job already finished) is
    a 404 and changes nothing. A known one with a body that is not a JSON object is a 400.
    Otherwise the job is woken to fetch its result (duplicates are harmless).
    """
    engine = request.app[ENGINE_KEY]
    job_id = await engine.job_for_webhook(token_hash(request.match_info["token"]))
    if job_id is None:
        raise web.HTTPNotFound()
    raw = await request.read()
    if len(raw) > MAX_WEBHOOK_BYTES:
        raise web.HTTPRequestEntityTooLarge(MAX_WEBHOOK_BYTES, len(raw))
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise web.HTTPBadRequest(text="body must be JSON") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    with job_context(job_id):
        engine.wake(job_id)
        log.debug("webhook for job %s (status %r)", job_id, body.get("status"))
    return web.json_response({"ok": True})


async def image(request: web.Request) -> web.Response:
    token = request.match_info["token"].split(".", 1)[0]
    output = await request.app[JOBS_KEY].output_by_token(token)
    if output is None:
        raise web.HTTPNotFound()
    try:
        data = await request.app[STORE_KEY].get(output.content_key)
    except ImageNotFound:
        raise web.HTTPNotFound() from None
    return web.Response(
        body=data,
        content_type=output.content_type,
        headers={
            "Cache-Control": "private, max-age=31536000, immutable",
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'",
        },
    )


async def alive(request: web.Request) -> web.Response:
    """The process is up and its event loop answers: a supervisor restarts it otherwise. It
    says nothing of the database or the generator (that is `/readyz`)."""
    return web.json_response({"alive": True, "active_jobs": request.app[ENGINE_KEY].active_jobs})


async def ready(request: web.Request) -> web.Response:
    """Whether a load balancer should send this replica work: its database can be written and
    its chat gateways are connected. A generator outage shows as "degraded" in the body and
    leaves it ready (bot/health/provider.py says why)."""
    report = await request.app[READINESS_KEY].check()
    return web.json_response(report.body, status=200 if report.ready else 503)
