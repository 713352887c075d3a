"""A ModelsLab stand-in over real HTTP: the client's test double and the product's demo mode.

It serves the four face endpoints, their fetch endpoints and the output links exactly as
shared/modelslab-api.md describes them, quirks included (numbers as strings, `messege`,
`output: ""` while processing, error bodies with HTTP 200, the per-key queue cap, duplicate
out-of-order webhooks, links that expire). The images it returns are the sender's own face on
a studio backdrop (see `simulated_images`).

Stranger mode (`stranger_image`, `stranger_rate`; the CLI's `--stranger-image PATH
--stranger-rate R`) makes some outputs show another person, to exercise an identity check. The
strangers are spread evenly over the outputs the simulator makes, in the order it makes them:
output number n (0, 1, 2, ... counted across all jobs; a failed job makes none) shows the
stranger when floor((n + 1) * R) > floor(n * R). So R = 0.5 makes outputs 1, 3, 5, ... strangers,
1.0 every output and 0 none. A stranger output is rendered from the stranger's face with the
operation, size, seed and slot the selfie's output would have had.

Time is read from an injectable clock so tests can finish jobs and expire links without
sleeping. API keys are only ever kept as SHA-256 digests and never logged or echoed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import ipaddress
import logging
import math
import random
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from http import HTTPStatus
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from backends.modelslab import simulated_images
from backends.params import MAX_SEED, GenerationParams, Operation, ParameterError

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
JobStatus = Literal["processing", "success", "failed"]
_T = TypeVar("_T")

_MiB = 1024 * 1024
_HEADSHOT_QUIRK_SIZE = (512, 768)

_SUBMIT_PATHS: dict[Operation, str] = {
    Operation.HEADSHOT: "/api/v6/image_editing/head_shot",
    Operation.AVATAR: "/api/v6/image_editing/avatar_gen",
    Operation.FACEGEN: "/api/v1/enterprise/face_gen/make_gen",
    Operation.FLUX_HEADSHOT: "/api/v1/enterprise/flux_headshot/make_gen",
}
_FETCH_PATHS: dict[str, frozenset[Operation]] = {
    "/api/v6/image_editing/fetch": frozenset({Operation.HEADSHOT, Operation.AVATAR}),
    "/api/v1/enterprise/face_gen/fetch": frozenset({Operation.FACEGEN}),
    "/api/v1/enterprise/flux_headshot/fetch": frozenset({Operation.FLUX_HEADSHOT}),
}
_ENTERPRISE_OPERATIONS = {"face_gen": Operation.FACEGEN, "flux_headshot": Operation.FLUX_HEADSHOT}

_IMAGE_FIELD = {Operation.AVATAR: "init_image"}
_REQUIRED: dict[Operation, tuple[str, ...]] = {
    Operation.HEADSHOT: ("prompt", "face_image"),
    Operation.AVATAR: ("prompt", "init_image"),
    Operation.FACEGEN: ("prompt", "face_image", "safety_checker", "s_scale", "seed"),
    Operation.FLUX_HEADSHOT: ("prompt", "face_image", "seed"),
}
_INT_FIELDS = ("width", "height", "samples", "num_inference_steps", "seed")
_FLOAT_FIELDS = (
    "guidance_scale",
    "s_scale",
    "identitynet_strength_ratio",
    "adapter_strength_ratio",
    "pose_strength",
    "canny_strength",
)
_TEXT_FIELDS = ("prompt", "negative_prompt", "safety_checker_type")
_TRUE = {"true", "yes", "1"}
_FALSE = {"false", "no", "0"}
_DATA_URI = re.compile(r"data:(image/[\w.+-]+);base64,(.*)", re.DOTALL)
_OUTPUT_NAME = re.compile(r"(\d+)\.(png|jpg|base64)")

_PROCESSING_MESSAGE = "Request processing in background, you can fetch at the fetch_result url."
_PROCESSING_TIP = "Your image is processing in background, you can get it with the fetch API."
_FAILED_MESSAGE = "Failed to generate image, please try again."
_INJECTED_MESSAGES = {
    402: "Insufficient credits",
    403: "Your plan does not include this endpoint",
    500: "Internal server error",
    503: "Service unavailable",
}
_PENDING_HTML = "<html><body><h1>Image is processing</h1><p>Try again later.</p></body></html>"


@dataclass
class SimulatorConfig:
    """How the simulator behaves. Mutable: tests change fields while it runs."""

    processing_seconds: float = 0.0  # 0: success at once; > 0: processing with this eta
    failure_rate: float = 0.0  # fraction of jobs that end failed
    link_ttl_seconds: float = 86400.0  # output links answer 404 this long after completion
    max_queued: int = 5  # per key; one more submit answers 429
    retry_after: int = 30
    api_keys: frozenset[str] | None = None  # None: any non-empty key
    output_format: simulated_images.ImageFormat = "jpeg"
    numbers_as_strings: bool = False  # every number in every answer sent as a string
    message_field: Literal["message", "messege"] = "message"  # processing/validation/failed
    errors_as_http_status: bool = True  # False: validation errors as HTTP 200 error bodies
    inject: list[int] = field(default_factory=list)  # statuses for the next API POSTs
    delay_seconds: float = 0.0  # real sleep before every API answer
    output_delay_seconds: float = 0.0  # real sleep before every output download answers
    seed: int | None = None  # RNG seed; read once, when the Simulator is made
    webhook_duplicates: int = 0  # extra copies of every webhook
    webhook_jitter_seconds: float = 0.0  # random delay before each delivery
    failed_webhook_id: Literal["int", "str", "random"] = "random"
    pending_links: Literal["404", "html"] = "404"  # how future links answer before the end
    base64_data_uri_prefix: bool = False  # .base64 bodies start with data:image/...;base64,
    public_url: str | None = None  # base of output and fetch links (default: the bound URL)
    max_image_bytes: int = 10 * _MiB  # read once, when the Simulator is made
    tick_seconds: float = 0.02  # how often the background task looks for finished jobs
    stranger_image: bytes | None = None  # another person's face, for stranger outputs
    stranger_rate: float = 0.0  # 0-1: the share of outputs that show the stranger, spread evenly


class StrangerError(ValueError):
    """Stranger mode is set up wrong; the message is one line that says how."""


def check_stranger(config: SimulatorConfig) -> simulated_images.PreparedFace | None:
    """Check the stranger settings and return the stranger's prepared face (None: not set).

    CPU work when an image is set (it is decoded, once: `prepare_face` caches it).
    """
    rate = config.stranger_rate
    if not 0.0 <= rate <= 1.0:  # NaN fails this too
        raise StrangerError(f"the stranger rate must be a number from 0 to 1 (got {rate!r})")
    if config.stranger_image is None:
        if rate > 0:
            raise StrangerError(f"the stranger rate is {rate:g} but no stranger image was given")
        return None
    try:
        return simulated_images.prepare_face(config.stranger_image)
    except simulated_images.NotAnImage as exc:
        raise StrangerError(f"the stranger image is not a usable image: {exc}") from None


def is_stranger(number: int, rate: float) -> bool:
    """Whether output `number` (counted from 0 across all jobs) shows the stranger.

    Exact decimal arithmetic, so 0.1 makes every tenth output a stranger, never one off.
    """
    exact = Fraction(str(rate))
    return math.floor((number + 1) * exact) > math.floor(number * exact)


@dataclass
class SimJob:
    """One generation as the simulator remembers it."""

    id: str
    op: Operation
    key_hash: str
    status: JobStatus
    params: dict[str, Any]
    webhook: str | None
    track_id: object
    outputs: list[bytes]
    output_count: int
    base64: bool
    extension: str
    base_url: str
    ready_at: float
    will_fail: bool
    generation_time: float
    completed_at: float | None = None
    message: str | None = None
    strangers: tuple[int, ...] = ()  # the output slots rendered from the stranger's face

    @property
    def image_urls(self) -> list[str]:
        return [self._url(n, self.extension) for n in range(self.output_count)]

    @property
    def output_urls(self) -> list[str]:
        """What `output` lists: the .base64 links when the request asked for base64."""
        if self.base64:
            return [self._url(n, "base64") for n in range(self.output_count)]
        return self.image_urls

    def _url(self, index: int, extension: str) -> str:
        return f"{self.base_url}/sim/outputs/{self.id}/{index}.{extension}"


@dataclass(frozen=True)
class _Submission:
    params: GenerationParams
    image: str
    pose_image: str | None
    base64: bool
    webhook: str | None
    track_id: object


class _ApiError(Exception):
    """An answer other than success, raised from deep inside a handler."""

    def __init__(self, status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None):
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class Simulator:
    """The ModelsLab simulator. `start()` binds a port; `.app` can also be served elsewhere."""

    def __init__(self, config: SimulatorConfig | None = None, *, clock: Clock | None = None):
        """Raises StrangerError when stranger mode is set up wrong."""
        self.config = config or SimulatorConfig()
        check_stranger(self.config)
        self.clock: Clock = clock or time.monotonic
        self.jobs: dict[str, SimJob] = {}
        self.requests: list[tuple[str, int]] = []
        self.output_requests = 0  # output downloads begun (counted before their delay)
        self.webhook_deliveries: list[dict[str, Any]] = []
        self.base_url: str | None = None
        self._rng = random.Random(self.config.seed)
        self._next_id = 70_000_000 + self._rng.randrange(1_000_000)
        self._reserved: Counter[str] = Counter()
        self._outputs_made = 0  # numbers the outputs for stranger mode
        self._outbox: list[SimJob] = []
        self._deliveries: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.app = self._make_app()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0 = any free port) and return the base URL actually bound."""
        runner = web.AppRunner(self.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        if ipaddress.ip_address(bound_host).is_unspecified:
            bound_host = "127.0.0.1"
        elif ":" in bound_host:
            bound_host = f"[{bound_host}]"
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _make_app(self) -> web.Application:
        app = web.Application(
            client_max_size=2 * self.config.max_image_bytes + _MiB,
            middlewares=[self._record_request],
        )
        for operation, path in _SUBMIT_PATHS.items():
            app.router.add_post(path, self._api(self._submit_handler(operation)))
        for path in _FETCH_PATHS:
            app.router.add_post(path + "/{id}", self._api(self._fetch))
        app.router.add_post(
            "/api/v1/enterprise/{service}/system_details", self._api(self._system_details)
        )
        app.router.add_get("/sim/outputs/{job_id}/{name}", self._output)
        app.cleanup_ctx.append(self._background)
        return app

    async def _background(self, _app: web.Application) -> AsyncIterator[None]:
        self._session = aiohttp.ClientSession()
        ticker = asyncio.create_task(self._tick_forever())
        yield
        ticker.cancel()
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(ticker, *self._deliveries, return_exceptions=True)
        await self._session.close()
        self._session = None

    # -- introspection ---------------------------------------------------------------------

    def queued_count(self, key: str) -> int:
        """Jobs of this key submitted and not yet finished (in-flight submissions included)."""
        return self._queued(hash_key(key))

    def complete_now(self, job_id: str) -> None:
        """Finish a processing job at once (as success, or failed if it was chosen to fail)."""
        job = self.jobs[str(job_id)]
        job.ready_at = min(job.ready_at, self.clock())
        self._settle(job)

    def _queued(self, key_hash: str) -> int:
        self._settle_all()
        processing = sum(
            1
            for job in self.jobs.values()
            if job.key_hash == key_hash and job.status == "processing"
        )
        return processing + self._reserved[key_hash]

    # -- job state -------------------------------------------------------------------------

    def _settle_all(self) -> None:
        for job in self.jobs.values():
            self._settle(job)

    def _settle(self, job: SimJob) -> None:
        """Finish the job if its time has come (every reader calls this first)."""
        if job.status != "processing" or self.clock() < job.ready_at:
            return
        job.completed_at = job.ready_at
        if job.will_fail:
            job.status = "failed"
            job.message = _FAILED_MESSAGE
            job.outputs = []
        else:
            job.status = "success"
        logger.debug("simulated job %s (%s) %s", job.id, job.op, job.status)
        if job.webhook:
            self._outbox.append(job)

    def _expired(self, job: SimJob) -> bool:
        return (
            job.completed_at is not None
            and self.clock() >= job.completed_at + self.config.link_ttl_seconds
        )

    async def _tick_forever(self) -> None:
        while True:
            try:
                self._tick()
            except Exception:
                logger.exception("simulator background tick failed")
            await asyncio.sleep(self.config.tick_seconds)

    def _tick(self) -> None:
        """Finish due jobs, send their webhooks, and drop the bytes of expired outputs."""
        self._settle_all()
        self._send_webhooks()
        for job in self.jobs.values():
            if job.outputs and self._expired(job):
                job.outputs = []

    # -- webhooks --------------------------------------------------------------------------

    def _send_webhooks(self) -> None:
        outbox, self._outbox = self._outbox, []
        for job in outbox:
            assert job.webhook is not None
            for _ in range(1 + max(0, self.config.webhook_duplicates)):
                delay = self._rng.uniform(0.0, max(0.0, self.config.webhook_jitter_seconds))
                task = asyncio.create_task(
                    self._deliver(job.webhook, self._webhook_body(job), delay)
                )
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)

    def _webhook_body(self, job: SimJob) -> dict[str, Any]:
        if job.status == "success":
            body: dict[str, Any] = {
                "status": "success",
                "id": int(job.id),
                "output": job.output_urls,
                "generationTime": job.generation_time,
                "track_id": job.track_id,
                "meta": job.params,
            }
        else:
            as_text = self.config.failed_webhook_id == "str" or (
                self.config.failed_webhook_id == "random" and self._rng.random() < 0.5
            )
            body = {
                "status": "failed",
                "id": job.id if as_text else int(job.id),
                "message": job.message,
                "track_id": job.track_id,
            }
        return self._numbers(body)

    async def _deliver(self, url: str, body: dict[str, Any], delay: float) -> None:
        await asyncio.sleep(delay)
        record: dict[str, Any] = {"url": url, "body": body, "status": None, "error": None}
        assert self._session is not None
        try:
            timeout = aiohttp.ClientTimeout(total=30)
            async with self._session.post(url, json=body, timeout=timeout) as response:
                await response.read()
                record["status"] = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            record["error"] = f"{type(exc).__name__}: {exc}"
            # The URL path may hold the receiver's secret token: log the host only.
            logger.warning("webhook to %s failed: %s", urlsplit(url).netloc, type(exc).__name__)
        self.webhook_deliveries.append(record)

    # -- the API ---------------------------------------------------------------------------

    @web.middleware
    async def _record_request(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            self.requests.append((request.path, exc.status))
            raise
        self.requests.append((request.path, response.status))
        return response

    def _api(
        self, action: Callable[[web.Request, dict[str, Any], str], Awaitable[dict[str, Any]]]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        """Wrap an API action: fault injection, delay, JSON body, key check, error answers."""

        async def handler(request: web.Request) -> web.Response:
            injected = self.config.inject.pop(0) if self.config.inject else None
            if self.config.delay_seconds > 0:
                await asyncio.sleep(self.config.delay_seconds)
            try:
                if injected is not None:
                    raise self._injected_error(injected)
                body = await _json_body(request)
                key_hash = self._authenticate(body.get("key"))
                answer = await action(request, body, key_hash)
            except _ApiError as error:
                return self._json(error.body, status=error.status, headers=error.headers)
            return self._json(answer)

        return handler

    def _json(
        self, body: dict[str, Any], *, status: int = 200, headers: Mapping[str, str] | None = None
    ) -> web.Response:
        return web.json_response(self._numbers(body), status=status, headers=headers)

    def _numbers(self, body: dict[str, Any]) -> dict[str, Any]:
        return _stringify_numbers(body) if self.config.numbers_as_strings else body

    def _authenticate(self, key: object) -> str:
        allowed = self.config.api_keys
        if not isinstance(key, str) or not key or (allowed is not None and key not in allowed):
            raise _ApiError(401, {"status": "error", "message": "Invalid API key"})
        return hash_key(key)

    def _injected_error(self, status: int) -> _ApiError:
        if status == 429:
            return self._rate_limited()
        try:
            message = _INJECTED_MESSAGES.get(status) or HTTPStatus(status).phrase
        except ValueError:
            message = "Error"
        return _ApiError(status, {"status": "error", "message": message})

    def _rate_limited(self) -> _ApiError:
        cap, retry_after = self.config.max_queued, self.config.retry_after
        body = {
            "status": "error",
            "message": f"Rate limit exceeded. Maximum {cap} queued requests allowed.",
            "retry_after": retry_after,
        }
        return _ApiError(429, body, {"Retry-After": str(retry_after)})

    def _invalid(self, message: str) -> _ApiError:
        status = 400 if self.config.errors_as_http_status else 200
        return _ApiError(status, {"status": "error", self.config.message_field: message})

    def _submit_handler(
        self, operation: Operation
    ) -> Callable[[web.Request, dict[str, Any], str], Awaitable[dict[str, Any]]]:
        async def submit(
            request: web.Request, body: dict[str, Any], key_hash: str
        ) -> dict[str, Any]:
            if self._queued(key_hash) >= self.config.max_queued:
                raise self._rate_limited()
            # Hold a queue slot while the images are read and made, so concurrent submits
            # cannot slip past the cap.
            self._reserved[key_hash] += 1
            try:
                job = await self._create_job(request, operation, body, key_hash)
            finally:
                self._reserved[key_hash] -= 1
            return self._submit_answer(job)

        return submit

    async def _create_job(
        self, request: web.Request, operation: Operation, body: dict[str, Any], key_hash: str
    ) -> SimJob:
        try:
            submission = parse_submission(operation, body)
        except ParameterError as exc:
            raise self._invalid(str(exc)) from None
        image_field = _IMAGE_FIELD.get(operation, "face_image")
        face = await self._read_inputs(image_field, submission)
        seed = submission.params.seed
        if seed is None:
            seed = self._rng.randrange(MAX_SEED + 1)
        params = submission.params.with_seed(seed)
        width, height = _output_size(params, face.original_size)
        count = _output_count(params, width, height)
        will_fail = self._rng.random() < self.config.failure_rate
        fmt = self.config.output_format
        started = time.perf_counter()
        outputs: list[bytes] = []
        strangers: tuple[int, ...] = ()
        if not will_fail:
            stranger = await self._stranger_face()
            # Numbered here, in the event loop, with no await before the render is handed to
            # a thread: concurrent jobs never share or skip a number.
            strangers = self._number_outputs(count)
            faces = [face] * count
            if stranger is not None:
                for slot in strangers:
                    faces[slot] = stranger
            outputs = await asyncio.to_thread(
                _render_outputs,
                faces,
                operation=str(operation),
                width=width,
                height=height,
                seed=seed,
                image_format=fmt,
            )
        wait = max(0.0, self.config.processing_seconds)
        job = SimJob(
            id=self._new_id(),
            op=operation,
            key_hash=key_hash,
            status="processing",
            params=_meta(params, submission, image_field, width, height),
            webhook=submission.webhook,
            track_id=submission.track_id,
            outputs=outputs,
            output_count=count,
            base64=submission.base64,
            extension="png" if fmt == "png" else "jpg",
            base_url=self.config.public_url or self.base_url or str(request.url.origin()),
            ready_at=self.clock() + wait,
            will_fail=will_fail,
            generation_time=round(wait or time.perf_counter() - started, 4),
            strangers=strangers,
        )
        self.jobs[job.id] = job
        self._settle(job)
        logger.debug(
            "simulated job %s (%s) accepted: %s, stranger slots %s",
            job.id,
            operation,
            job.status,
            list(strangers),
        )
        return job

    async def _read_inputs(
        self, image_field: str, submission: _Submission
    ) -> simulated_images.PreparedFace:
        """The selfie's prepared face; the pose image is only checked."""
        selfie = await self._read_image(image_field, submission.image, submission.base64)
        face = await self._decode(image_field, selfie, simulated_images.prepare_face)
        if submission.pose_image is not None:
            pose = await self._read_image("pose_image", submission.pose_image, submission.base64)
            await self._decode("pose_image", pose, simulated_images.decode_image)
        return face

    async def _stranger_face(self) -> simulated_images.PreparedFace | None:
        """The stranger's face, checked again: tests may change the config while it runs."""
        try:
            if self.config.stranger_image is None:
                return check_stranger(self.config)  # nothing to decode
            return await asyncio.to_thread(check_stranger, self.config)
        except StrangerError as exc:
            raise _ApiError(500, {"status": "error", "message": f"simulator: {exc}"}) from None

    def _number_outputs(self, count: int) -> tuple[int, ...]:
        """Take the next `count` output numbers; the job's slots that show the stranger."""
        first = self._outputs_made
        self._outputs_made += count
        rate = self.config.stranger_rate
        return tuple(slot for slot in range(count) if is_stranger(first + slot, rate))

    def _new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    def _submit_answer(self, job: SimJob) -> dict[str, Any]:
        if job.status == "processing":
            return {
                "status": "processing",
                "id": int(job.id),
                "eta": round(max(0.0, job.ready_at - self.clock()), 2),
                "fetch_result": f"{job.base_url}{_fetch_path(job.op)}/{job.id}",
                "future_links": job.output_urls,
                "output": [],
                self.config.message_field: _PROCESSING_MESSAGE,
                "tip": _PROCESSING_TIP,
                "meta": job.params,
            }
        return self._finished_answer(job)

    def _finished_answer(self, job: SimJob) -> dict[str, Any]:
        if job.status == "failed":
            return {
                "status": "failed",
                "id": int(job.id),
                self.config.message_field: job.message,
                "output": [],
            }
        return {
            "status": "success",
            "generationTime": job.generation_time,
            "id": int(job.id),
            "output": job.output_urls,
            "proxy_links": job.image_urls,
            "meta": job.params,
            "nsfw_content_detected": False,
        }

    async def _fetch(
        self, request: web.Request, body: dict[str, Any], key_hash: str
    ) -> dict[str, Any]:
        operations = _FETCH_PATHS[request.path.rsplit("/", 1)[0]]
        job = self.jobs.get(request.match_info["id"])
        if job is None or job.op not in operations or job.key_hash != key_hash:
            raise _ApiError(404, {"status": "error", "message": "Request not found"})
        self._settle(job)
        if job.status == "processing":
            return {
                "status": "processing",
                "id": int(job.id),
                "eta": round(max(0.0, job.ready_at - self.clock()), 2),
                self.config.message_field: _PROCESSING_MESSAGE,
                "tip": _PROCESSING_TIP,
                "output": "",
            }
        return self._finished_answer(job)

    async def _system_details(
        self, request: web.Request, body: dict[str, Any], key_hash: str
    ) -> dict[str, Any]:
        operation = _ENTERPRISE_OPERATIONS.get(request.match_info["service"])
        if operation is None:
            raise _ApiError(404, {"status": "error", "message": "Not found"})
        now = self.clock()
        waiting = [
            job.ready_at - now
            for job in self.jobs.values()
            if job.key_hash == key_hash and job.op is operation and job.status == "processing"
        ]
        return {
            "status": "success",
            "model_count": 1,
            "queue_time": round(max(waiting, default=0), 2),
        }

    # -- images in and out -----------------------------------------------------------------

    async def _read_image(self, name: str, reference: str, is_base64: bool) -> bytes:
        if reference.startswith(("http://", "https://")):
            return await self._download(name, reference)
        match = _DATA_URI.fullmatch(reference.strip())
        if not is_base64:
            hint = "set base64 to true" if match else "send an http(s) URL or a data URI"
            raise self._invalid(f"{name} must be an image URL or a data URI: {hint}")
        encoded = match.group(2) if match else reference
        try:
            data = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise self._invalid(f"{name} is not valid base64") from None
        if len(data) > self.config.max_image_bytes:
            raise self._invalid(f"{name} is larger than {self.config.max_image_bytes} bytes")
        return data

    async def _decode(self, name: str, data: bytes, decoder: Callable[[bytes], _T]) -> _T:
        """Decode in a worker thread (it is CPU work); a non-image is an error naming `name`."""
        try:
            return await asyncio.to_thread(decoder, data)
        except simulated_images.NotAnImage as exc:
            raise self._invalid(f"{name} is not a usable image: {exc}") from None

    async def _download(self, name: str, url: str) -> bytes:
        host = urlsplit(url).hostname or ""
        if not _is_loopback(host):
            raise self._invalid(f"{name}: the simulator only fetches loopback URLs")
        assert self._session is not None
        limit = self.config.max_image_bytes
        try:
            timeout = aiohttp.ClientTimeout(total=15)
            # No redirects: a loopback URL must not lead the simulator elsewhere.
            async with self._session.get(url, timeout=timeout, allow_redirects=False) as response:
                if response.status != 200:
                    raise self._invalid(f"{name}: the URL answered HTTP {response.status}")
                data = await response.content.read(limit + 1)
        except (aiohttp.ClientError, TimeoutError, OSError):
            raise self._invalid(f"{name}: the URL could not be fetched") from None
        if len(data) > limit:
            raise self._invalid(f"{name} is larger than {limit} bytes")
        return data

    async def _output(self, request: web.Request) -> web.Response:
        self.output_requests += 1
        if self.config.output_delay_seconds > 0:
            await asyncio.sleep(self.config.output_delay_seconds)
        job = self.jobs.get(request.match_info["job_id"])
        name = _OUTPUT_NAME.fullmatch(request.match_info["name"])
        if job is None or name is None:
            raise web.HTTPNotFound()
        self._settle(job)
        index, extension = int(name.group(1)), name.group(2)
        if job.status == "processing" and self.config.pending_links == "html":
            return web.Response(text=_PENDING_HTML, content_type="text/html")
        wanted = job.base64 if extension == "base64" else extension == job.extension
        if job.status != "success" or not wanted or index >= len(job.outputs) or self._expired(job):
            raise web.HTTPNotFound()
        data = job.outputs[index]
        mime = "image/png" if job.extension == "png" else "image/jpeg"
        if extension != "base64":
            return web.Response(body=data, content_type=mime)
        text = base64.b64encode(data).decode()
        if self.config.base64_data_uri_prefix:
            text = f"data:{mime};base64,{text}"
        return web.Response(text=text, content_type="text/plain")


def _render_outputs(
    faces: list[simulated_images.PreparedFace],
    *,
    operation: str,
    width: int,
    height: int,
    seed: int,
    image_format: simulated_images.ImageFormat,
) -> list[bytes]:
    """One encoded output per slot, each from its own face (CPU-bound: run it in a thread)."""
    return [
        simulated_images.encode(
            simulated_images.render(
                face, operation=operation, width=width, height=height, seed=seed, index=slot
            ),
            image_format,
        )
        for slot, face in enumerate(faces)
    ]


# -- parsing the wire ---------------------------------------------------------------------


def parse_submission(operation: Operation, body: Mapping[str, Any]) -> _Submission:
    """Turn a request body into checked parameters; raise ParameterError naming the field."""
    for name in _REQUIRED[operation]:
        if body.get(name) in (None, ""):
            raise ParameterError(name, "set", None, message=f"{name} is required")
    options: dict[str, Any] = {}
    for name in _INT_FIELDS:
        options[name] = _parse_int(name, body.get(name))
    for name in _FLOAT_FIELDS:
        options[name] = _parse_float(name, body.get(name))
    for name in _TEXT_FIELDS:
        options[name] = _parse_text(name, body.get(name))
    if body.get("safety_checker") not in (None, ""):
        options["safety_checker"] = _parse_bool("safety_checker", body["safety_checker"])
    if body.get("controlnet_selection") not in (None, ""):
        options["controlnet_selection"] = body["controlnet_selection"]
    params = GenerationParams.create(operation, **options)
    image_field = _IMAGE_FIELD.get(operation, "face_image")
    pose = body.get("pose_image") if operation is Operation.AVATAR else None
    webhook = _parse_text("webhook", body.get("webhook")) or None
    if webhook is not None and urlsplit(webhook).scheme not in ("http", "https"):
        raise ParameterError("webhook", "an http(s) URL", webhook)
    return _Submission(
        params=params,
        image=_parse_text(image_field, body[image_field]) or "",
        pose_image=_parse_text("pose_image", pose) or None,
        base64=_parse_bool("base64", body.get("base64", False)),
        webhook=webhook,
        track_id=body.get("track_id"),
    )


def _parse_int(name: str, value: object) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return int(value.strip())
        with contextlib.suppress(ValueError):
            number = float(value)
            if number.is_integer():
                return int(number)
    raise ParameterError(name, "an integer", value)


def _parse_float(name: str, value: object) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return float(value.strip())
    raise ParameterError(name, "a number", value)


def _parse_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | str) and str(value).strip().lower() in _TRUE | _FALSE:
        return str(value).strip().lower() in _TRUE
    raise ParameterError(name, "true or false", value)


def _parse_text(name: str, value: object) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise ParameterError(name, "a text", value)


def _output_size(params: GenerationParams, face_size: tuple[int, int]) -> tuple[int, int]:
    """Requested size, else (headshot) the face image's size capped, else the default."""
    limits = params.limits
    natural = simulated_images.natural_size(face_size, limits.max_width, limits.max_height)
    width = params.width or limits.defaults.get("width") or natural[0]
    height = params.height or limits.defaults.get("height") or natural[1]
    return width, height


def _output_count(params: GenerationParams, width: int, height: int) -> int:
    if params.operation is Operation.HEADSHOT and (width, height) == _HEADSHOT_QUIRK_SIZE:
        return 1  # documented quirk: at 512x768 headshot returns a single image
    return params.samples


def _meta(
    params: GenerationParams, submission: _Submission, image_field: str, width: int, height: int
) -> dict[str, Any]:
    """The echo of the request's parameters (never the key, never inline image data)."""
    meta = params.to_dict()
    del meta["operation"]
    meta.update(width=width, height=height, base64=submission.base64)
    meta.update(webhook=submission.webhook, track_id=submission.track_id)
    for name, value in ((image_field, submission.image), ("pose_image", submission.pose_image)):
        if value and value.startswith(("http://", "https://")):
            meta[name] = value
    return meta


def _fetch_path(operation: Operation) -> str:
    return next(path for path, ops in _FETCH_PATHS.items() if operation in ops)


async def _json_body(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise _ApiError(
            400, {"status": "error", "message": "The request body must be a JSON object"}
        )
    return body


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _stringify_numbers(value: Any) -> Any:
    """Every int and float (not bool) as a string, as some ModelsLab answers send them."""
    if isinstance(value, dict):
        return {key: _stringify_numbers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_stringify_numbers(item) for item in value]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


async def serve(
    host: str = "127.0.0.1", port: int = 0, config: SimulatorConfig | None = None
) -> None:
    """Run a simulator until cancelled (the `simulate` CLI command)."""
    simulator = Simulator(config)
    url = await simulator.start(host, port)
    logger.info("ModelsLab simulator listening on %s", url)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
