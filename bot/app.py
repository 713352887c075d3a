"""Builds the running service from settings: database, image store, backend, engine, web server."""

from __future__ import annotations

import errno
import logging
import os
import secrets
import socket
from contextlib import AsyncExitStack
from dataclasses import dataclass

from aiohttp import web
from pydantic import SecretStr

from backends.base import Backend
from backends.fallback import generator_name
from backends.local.backend import WorkerStartFailed
from bot.backends import FleetAccess, choose_backend, uses_fleet
from bot.commands import CommandLayer
from bot.commands.context import Services
from bot.config import ConfigError, Settings
from bot.faces import FaceModelsMissing, FaceRules, FaceToolkit
from bot.fetch import SafeFetcher
from bot.fleet.backend import fleet_of
from bot.fleet.pools import capacity_source
from bot.fleet.view import FleetView, WorkerView
from bot.generation import GenerationService
from bot.health import ProviderHealth, Readiness
from bot.images import workers as image_workers
from bot.jobs.engine import EngineTimings, JobEngine
from bot.jobs.event_bus import EventBus
from bot.jobs.identity import IdentityGate
from bot.metrics import ServiceFigures, WorkerFigures, open_metrics
from bot.metrics.endpoint import MetricsPage, metrics_app
from bot.stores import open_store
from bot.web import ChatWebhooks, create_web_app
from storage.accounts import AccountRepository
from storage.audit import AuditRepository
from storage.bans import BanRepository
from storage.confirmations import ConfirmationRepository
from storage.coordination import Coordination, ServiceAlreadyRunning, open_coordination
from storage.database import Database
from storage.deliveries import DeliveryRepository
from storage.dispatch import DispatchQueue
from storage.health import WriteProbe
from storage.history import HistoryRepository
from storage.imagestore import ImageStore
from storage.inbox import InboxRepository
from storage.interactions import InteractionRepository
from storage.jobs import JobRepository
from storage.migrate import upgrade
from storage.posts import PostRepository
from storage.pseudonyms import (
    KeyMismatch,
    Pseudonyms,
    key_from_text,
    load_or_create_key,
    read_key_file,
    verify_key,
)
from storage.settings import SettingsRepository
from storage.standing import StandingRepository
from storage.stats import StatsRepository
from storage.waits import WaitRepository

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Overrides:
    """What a caller may set beyond the settings: tests, the benchmark and demo mode use these."""

    backend: Backend | None = None
    timings: EngineTimings | None = None
    web_port: int | None = None
    # Ask the provider to send webhooks to our own listening address (the in-process simulator).
    local_webhooks: bool = False
    # How selfie links are fetched (tests let the loopback server stand in for the internet).
    fetcher: SafeFetcher | None = None
    # An unreachable provider fails after one short try, not the retry schedule (the CLI).
    quick_provider_failure: bool = False
    # Decode workers shared by many apps in one process (the tests start hundreds of apps,
    # and each would otherwise start its own processes).
    images: image_workers.ImageWorkers | None = None


class HeadshotApp:
    """The whole service in one process. `async with HeadshotApp(settings) as app: ...`

    `service=False` is `headshot-bot generate`'s: it drives only the jobs it queues itself. It
    never resumes or sweeps what the database holds, which may be a running service's.
    """

    def __init__(
        self, settings: Settings, overrides: Overrides | None = None, *, service: bool = True
    ) -> None:
        self.settings = settings
        self.service = service
        self._overrides = overrides or Overrides()
        self._opened = AsyncExitStack()
        self.db: Database
        self.coordination: Coordination
        self.store: ImageStore
        self.backend: Backend
        self.accounts: AccountRepository
        self.jobs: JobRepository
        self.events = EventBus()
        # Chat platforms' webhook handlers, mounted by their adapters once the server runs.
        self.chat_webhooks = ChatWebhooks()
        self.engine: JobEngine
        self.generation: GenerationService
        # The decode workers every image from outside goes through (bot/images/workers.py).
        self.images: image_workers.ImageWorkers
        self.fetcher: SafeFetcher
        self.commands: CommandLayer
        self.base_url = ""
        self.metrics = open_metrics(settings.metrics)
        self.provider_health = ProviderHealth(self.metrics)
        self.readiness: Readiness
        self.fleet: FleetView
        # Where /metrics is served when METRICS_PORT gives it a port of its own.
        self.metrics_url: str | None = None

    async def start(self) -> None:
        """Open everything in order; whatever fails closes what was already open."""
        try:
            await self._open()
        except BaseException:
            try:
                await self.stop()
            except Exception:
                # The reason start-up failed is what the operator needs to see, not this.
                log.exception("closing after a failed start-up failed too")
            raise

    async def _open(self) -> None:
        settings = self.settings
        opened = self._opened
        # The GPU fleet's backend reads the worker registry through the service's database: it
        # is built once that is there (below). Any other generator now: its settings are the
        # first thing checked.
        on_fleet = self._overrides.backend is None and uses_fleet(settings)
        if not on_fleet:
            self._use_backend(self._overrides.backend or self._choose_backend(None))
        # The quick checks before the generator starts: a local GPU loads its models for
        # minutes, and a taken port or an unreadable database should not wait for that.
        url = settings.effective_database_url
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.coordination = open_coordination(url)
        opened.push_async_callback(self.coordination.aclose)
        if self.service:
            try:
                await self.coordination.claim_service()
            except ServiceAlreadyRunning as exc:
                raise ConfigError(f"invalid setting DATABASE_URL: {exc}") from None
        await upgrade(url)
        sock = _bind(settings.web_host, _pick(self._overrides.web_port, settings.web_port))
        opened.callback(sock.close)
        metrics_sock = (
            _bind(settings.web_host, settings.metrics_port, setting="METRICS_PORT")
            if settings.metrics and settings.metrics_port is not None
            else None
        )
        if metrics_sock is not None:
            opened.callback(metrics_sock.close)
        if not on_fleet:
            await self._start_backend()
        if self._overrides.images is not None:
            self.images = self._overrides.images  # the caller's: it starts and closes them
        else:
            self.images = image_workers.ImageWorkers(
                workers=settings.image_workers,
                time_limit=settings.image_decode_seconds,
                max_waiting=settings.image_decode_queue,
                max_wait_seconds=settings.image_decode_wait_seconds,
                memory_budget=settings.image_decode_memory_mb * 1024 * 1024,
            )
            opened.push_async_callback(self.images.aclose)
            await self.images.start()
        image_workers.install(self.images)
        opened.callback(image_workers.uninstall, self.images)
        self.db = Database(url, sqlite_synchronous=settings.sqlite_synchronous)
        opened.push_async_callback(self.db.dispose)
        if on_fleet:
            # Quick (the workers hold the models), and closed before the database.
            self._use_backend(self._choose_backend(FleetAccess(self.db, self.coordination.listen)))
            await self._start_backend()
        # Bans and a forgotten user's spent allowance are kept under a keyed hash of the
        # platform id. Every process on the database must have the same key: checked here.
        self.pseudonyms = Pseudonyms(_pseudonym_key(settings))
        try:
            await verify_key(self.db, self.pseudonyms)
        except KeyMismatch as exc:
            raise ConfigError(
                f"invalid setting PSEUDONYM_KEY: {exc}: give every process on this database "
                "the same PSEUDONYM_KEY (or the first one's $DATA_DIR/pseudonym.key)"
            ) from None
        if self.service and not self.db.is_sqlite:
            _check_store_is_shared(settings)
        self.store = open_store(settings)
        opened.push_async_callback(self.store.aclose)
        probe = WriteProbe(self.db)
        opened.push_async_callback(probe.aclose)
        self.accounts = AccountRepository(self.db, self.pseudonyms)
        self.jobs = JobRepository(self.db, self.pseudonyms)
        faces = await self._open_faces()
        identity = (
            IdentityGate(
                faces,
                store=self.store,
                jobs=self.jobs,
                retries=settings.identity_retries,
                generator_of=lambda provider_id: generator_name(self.backend, provider_id),
            )
            if faces is not None and settings.identity_gate
            else None
        )

        host, port = sock.getsockname()[:2]
        self.base_url = f"http://{host}:{port}"
        public = str(settings.public_base_url).rstrip("/") if settings.public_base_url else None
        self.engine = JobEngine(
            jobs=self.jobs,
            dispatch_queue=DispatchQueue(self.db),
            backend=self.backend,
            store=self.store,
            events=self.events,
            coordination=self.coordination,
            owner=process_name(),
            capacity=capacity_source(self.backend, settings),
            image_base_url=public or self.base_url,
            webhook_base_url=self.base_url if self._overrides.local_webhooks else public,
            max_output_bytes=settings.max_output_bytes,
            timings=self._overrides.timings
            or EngineTimings(
                job_timeout_seconds=settings.job_timeout_seconds,
                link_ttl_seconds=settings.provider_link_ttl_seconds,
                lease_seconds=settings.job_lease_seconds,
            ),
            input_retention_seconds=settings.selfie_retention_seconds,
            identity=identity,
            metrics=self.metrics,
        )
        self.generation = GenerationService(
            jobs=self.jobs,
            store=self.store,
            engine=self.engine,
            daily_quota=settings.daily_quota,
            max_upload_bytes=settings.max_upload_bytes,
            faces=faces if settings.face_check else None,
            metrics=self.metrics,
        )
        self.fetcher = self._overrides.fetcher or SafeFetcher(
            max_bytes=settings.max_selfie_url_bytes
        )
        opened.push_async_callback(self.fetcher.aclose)
        self.fleet = FleetView(
            self.backend,
            gpus.workers if (gpus := fleet_of(self.backend)) else None,
            timeout=settings.gpu_worker_timeout_seconds,
        )
        self.readiness = Readiness(
            database_writable=probe.check,
            provider=self.provider_health,
            fleet_live=self._fleet_live if self.fleet.has_gpu else None,
        )
        self.commands = CommandLayer(
            Services(
                settings=settings,
                accounts=self.accounts,
                jobs=self.jobs,
                history=HistoryRepository(self.db),
                scoped=SettingsRepository(self.db),
                bans=BanRepository(self.db),
                audit=AuditRepository(self.db),
                stats=StatsRepository(self.db),
                deliveries=DeliveryRepository(self.db),
                store=self.store,
                engine=self.engine,
                events=self.events,
                generation=self.generation,
                fetcher=self.fetcher,
                confirmations=ConfirmationRepository(self.db),
                pseudonyms=self.pseudonyms,
                image_base_url=public or self.base_url,
                coordination=self.coordination,
                waits=WaitRepository(self.db),
                inbox=InboxRepository(self.db),
                interactions=InteractionRepository(self.db),
                posts=PostRepository(self.db),
                standing=StandingRepository(self.db),
                fleet=self.fleet,
                metrics=self.metrics,
                readiness=self.readiness,
            )
        )
        opened.push_async_callback(self.commands.aclose)
        page = (
            MetricsPage(self.metrics, self.figures, token=_secret(settings.metrics_token))
            if settings.metrics
            else None
        )
        runner = web.AppRunner(
            create_web_app(
                self.engine,
                self.jobs,
                self.store,
                self.chat_webhooks,
                self.readiness,
                metrics=page if metrics_sock is None else None,
            )
        )
        self.backend.listen(self.engine.nudge)
        await runner.setup()
        opened.push_async_callback(runner.cleanup)
        await web.SockSite(runner, sock).start()
        if page is not None and metrics_sock is not None:
            await self._serve_metrics_apart(page, metrics_sock)
        # Stopped first: no job is driven while what it uses closes.
        opened.push_async_callback(self.engine.stop)
        await self.engine.begin(take_over=self.service)
        log.info("listening on %s", self.base_url)

    async def _serve_metrics_apart(self, page: MetricsPage, sock: socket.socket) -> None:
        """`/metrics` alone on METRICS_PORT."""
        runner = web.AppRunner(metrics_app(page))
        await runner.setup()
        self._opened.push_async_callback(runner.cleanup)
        await web.SockSite(runner, sock).start()
        host, port = sock.getsockname()[:2]
        self.metrics_url = f"http://{host}:{port}/metrics"

    async def _open_faces(self) -> FaceToolkit | None:
        """The face toolkit, when the intake check or the identity gate is on."""
        settings = self.settings
        if not (settings.face_check or settings.identity_gate):
            return None
        rules = FaceRules(
            dominance=settings.face_dominance,
            min_face_px=settings.face_min_size,
            threshold=settings.identity_threshold,
        )
        faces = FaceToolkit(rules, workers=settings.face_workers)
        self._opened.push_async_callback(faces.aclose)
        try:
            await faces.start()
        except FaceModelsMissing as exc:
            raise ConfigError(f"invalid setting FACE_CHECK / IDENTITY_GATE: {exc}") from None
        return faces

    def _choose_backend(self, fleet: FleetAccess | None) -> Backend:
        return choose_backend(
            self.settings,
            quick_provider_failure=self._overrides.quick_provider_failure,
            fleet=fleet,
            on_provider_call=self.provider_health.record,
        )

    async def figures(self) -> ServiceFigures:
        """What a scrape reads now: the queue, the provider's slots, the GPU workers. Without
        the database, what it holds is unknown (NaN); the counters are still scraped."""
        try:
            return await self._read_figures()
        except Exception as exc:
            log.warning("metrics: the queue could not be read (%s)", type(exc).__name__)
            return ServiceFigures.unreadable(self.engine.active_jobs, self.provider_health.degraded)

    async def _read_figures(self) -> ServiceFigures:
        dispatcher = self.engine.dispatcher
        workers = await self.fleet.workers()
        return ServiceFigures(
            queue_depth=await dispatcher.waiting_count(),
            active_jobs=self.engine.active_jobs,
            slots_used=await dispatcher.in_flight(),
            slots_cap=await dispatcher.current_capacity(),
            provider_degraded=self.provider_health.degraded
            or (self.fleet.has_gpu and not any(worker.live for worker in workers)),
            workers=tuple(_worker_figures(worker) for worker in workers),
        )

    async def _fleet_live(self) -> bool | None:
        """Whether any GPU worker is live; None when that cannot be read now."""
        try:
            workers = await self.fleet.workers()
        except Exception as exc:
            log.warning("readiness: the GPU workers could not be read (%s)", type(exc).__name__)
            return None
        return any(worker.live for worker in workers)

    def _use_backend(self, backend: Backend) -> None:
        self.backend = backend
        self._opened.push_async_callback(backend.aclose)

    async def _start_backend(self) -> None:
        try:
            await self.backend.start()
        except WorkerStartFailed as exc:
            raise ConfigError(f"the local GPU backend did not start: {exc}") from None

    async def stop(self) -> None:
        """Close what `start` opened, last opened first. Safe to call again."""
        await self._opened.aclose()

    async def __aenter__(self) -> HeadshotApp:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def process_name() -> str:
    """This process, as the owner of the jobs it drives: the host, the pid, and a random tag
    (a pid is reused after a restart)."""
    name = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
    return name[-64:]


def _check_store_is_shared(settings: Settings) -> None:
    """On PostgreSQL any replica may serve an image or re-host an output: a folder on one
    machine would not do, unless the operator says every replica sees it."""
    if settings.s3_bucket or settings.image_store_shared:
        return
    raise ConfigError(
        "invalid setting S3_BUCKET: with PostgreSQL every replica must see the same images: set "
        "S3_BUCKET (an S3-compatible store), or IMAGE_STORE_SHARED=1 if $DATA_DIR/images is "
        "one folder for every replica (a single replica, or a network folder)"
    )


def _pseudonym_key(settings: Settings) -> bytes:
    """PSEUDONYM_KEY, else the file PSEUDONYM_KEY_FILE names, else $DATA_DIR/pseudonym.key
    (made on first start)."""
    if settings.pseudonym_key is not None:
        return key_from_text(settings.pseudonym_key.get_secret_value())
    if settings.pseudonym_key_file is not None:
        try:
            return read_key_file(settings.pseudonym_key_file)
        except OSError as exc:
            raise ConfigError(
                f"invalid setting PSEUDONYM_KEY_FILE: cannot read {settings.pseudonym_key_file} "
                f"({exc.strerror})"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"invalid setting PSEUDONYM_KEY_FILE: {exc}") from None
    return load_or_create_key(settings.data_dir / "pseudonym.key")


def _pick(override: int | None, default: int) -> int:
    return default if override is None else override


def _worker_figures(worker: WorkerView) -> WorkerFigures:
    state = "draining" if worker.draining else ("live" if worker.live else "silent")
    return WorkerFigures(
        name=f"{worker.host}/{worker.device}"[:64],
        state=state,
        jobs_done=worker.jobs_done,
        jobs_failed=worker.jobs_failed,
        seconds_per_image=worker.seconds_per_image,
        heartbeat_age=worker.heartbeat_age,
    )


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


def _bind(host: str, port: int, *, setting: str = "WEB_PORT") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        # A name that does not resolve, or an address this machine does not have, is the
        # host's fault; anything else (taken, privileged) the port's.
        setting = (
            "WEB_HOST"
            if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL
            else setting
        )
        raise ConfigError(
            f"invalid setting {setting}: cannot listen on {host}:{port} ({exc.strerror})"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock
