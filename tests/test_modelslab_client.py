"""The real ModelsLab client against the real simulator, over loopback HTTP."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import io
import json
import logging
import random
import socket
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from PIL import Image, ImageDraw

from backends.base import ProviderResult, ResultStatus, SubmitRequest
from backends.errors import (
    AuthenticationFailed,
    BackendError,
    InsufficientCredits,
    InvalidRequest,
    OutputTooLarge,
    OutputUnavailable,
    PlanRestricted,
    ProviderUnavailable,
    ProviderUnreachable,
    RateLimited,
    UnknownProviderJob,
)
from backends.modelslab import ModelsLabClient
from backends.modelslab import client as client_module
from backends.modelslab.simulator import Simulator, SimulatorConfig
from backends.params import MAX_SEED, GenerationParams, Operation

KEY = "sk-live-SECRET-9f8e7d6c5b4a39281706"
MAX_BYTES = 5 * 1024 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 10_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Sleeps:
    """Stands in for asyncio.sleep: records the waits and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def _selfie() -> bytes:
    image = Image.new("RGB", (320, 400), (70, 80, 95))
    draw = ImageDraw.Draw(image)
    draw.ellipse((100, 90, 220, 250), fill=(224, 172, 140))
    draw.rectangle((60, 300, 260, 400), fill=(40, 50, 120))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90)
    return out.getvalue()


SELFIE = _selfie()


def _request(operation: str, face: bytes = SELFIE, **options: Any) -> SubmitRequest:
    params = GenerationParams.create(operation, prompt="a professional headshot", **options)
    return SubmitRequest(params=params, face_image=face)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def sim(clock: FakeClock) -> AsyncIterator[Simulator]:
    simulator = Simulator(SimulatorConfig(api_keys=frozenset({KEY}), seed=7), clock=clock)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


MakeClient = Callable[..., ModelsLabClient]


@pytest.fixture
async def make_client(sim: Simulator, sleeps: Sleeps) -> AsyncIterator[MakeClient]:
    made: list[ModelsLabClient] = []

    def make(**overrides: Any) -> ModelsLabClient:
        options: dict[str, Any] = {"timeout": 10.0, "rng": random.Random(0), "sleep": sleeps}
        options.update(overrides)
        key = options.pop("api_key", KEY)
        assert sim.base_url is not None
        made.append(ModelsLabClient(key, sim.base_url, **options))
        return made[-1]

    yield make
    for client in made:
        await client.aclose()


@pytest.fixture
def client(make_client: MakeClient) -> ModelsLabClient:
    return make_client()


def _api_calls(sim: Simulator) -> list[tuple[str, int]]:
    return [(path, status) for path, status in sim.requests if path.startswith("/api/")]


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


# --- the happy paths ------------------------------------------------------------------------

CASES = [
    ("headshot", {"width": 256, "height": 320}, (256, 320)),
    ("avatar", {"controlnet_selection": ["pose", "canny"]}, (512, 768)),
    ("facegen", {"samples": 2, "width": 384, "height": 512}, (384, 512)),
    ("flux_headshot", {"width": 512, "height": 512, "num_inference_steps": 8}, (512, 512)),
]


@pytest.mark.parametrize(("operation", "options", "size"), CASES)
async def test_immediate_success_and_download(
    client: ModelsLabClient,
    sim: Simulator,
    operation: str,
    options: dict[str, Any],
    size: tuple[int, int],
) -> None:
    result = await client.submit(_request(operation, seed=1234, **options))
    assert result.status is ResultStatus.SUCCESS
    assert isinstance(result.provider_id, str) and result.provider_id in sim.jobs
    assert result.seed == 1234
    assert result.generation_time is not None
    samples = options.get("samples", 1)
    assert len(result.outputs) == samples
    for url in result.outputs:
        assert url.endswith(".base64")  # base64 true by default
        image = _open(await client.download_output(url, max_bytes=MAX_BYTES))
        assert image.size == size
    assert sim.jobs[result.provider_id].op == Operation(operation)


async def test_the_request_reaches_the_right_endpoint_with_its_fields(
    client: ModelsLabClient, sim: Simulator
) -> None:
    request = SubmitRequest(
        params=GenerationParams.create(
            "avatar", prompt="a knight", seed=5, pose_strength=0.7, controlnet_selection="canny"
        ),
        face_image=SELFIE,
        pose_image=SELFIE,
        webhook_url="http://127.0.0.1:1/webhooks/modelslab/token",
        track_id="job-42",
    )
    result = await client.submit(request)
    assert _api_calls(sim) == [("/api/v6/image_editing/avatar_gen", 200)]
    job = sim.jobs[result.provider_id or ""]
    assert job.params["pose_strength"] == 0.7
    assert job.params["controlnet_selection"] == ["canny"]
    assert job.track_id == "job-42"
    assert job.webhook == "http://127.0.0.1:1/webhooks/modelslab/token"


@pytest.mark.parametrize("operation", ["facegen", "flux_headshot"])
async def test_required_seed_is_picked_reproducibly(
    make_client: MakeClient, operation: str
) -> None:
    expected = random.Random(99).randint(0, MAX_SEED)
    client = make_client(rng=random.Random(99))
    result = await client.submit(_request(operation))
    assert result.seed == expected


async def test_headshot_without_seed_lets_the_provider_choose(client: ModelsLabClient) -> None:
    result = await client.submit(_request("headshot", width=128, height=128))
    assert result.status is ResultStatus.SUCCESS
    assert isinstance(result.seed, int)


@pytest.mark.parametrize(("operation", "options", "size"), CASES)
async def test_processing_then_fetch(
    client: ModelsLabClient,
    sim: Simulator,
    clock: FakeClock,
    operation: str,
    options: dict[str, Any],
    size: tuple[int, int],
) -> None:
    sim.config.processing_seconds = 60.0
    submitted = await client.submit(_request(operation, seed=3, **options))
    assert submitted.status is ResultStatus.PROCESSING
    assert submitted.eta_seconds == pytest.approx(60.0)
    assert submitted.outputs == ()
    provider_id = submitted.provider_id
    assert provider_id is not None

    still = await client.fetch(Operation(operation), provider_id)
    assert still.status is ResultStatus.PROCESSING
    assert still.provider_id == provider_id
    assert still.outputs == ()

    clock.advance(61.0)
    done = await client.fetch(Operation(operation), provider_id)
    assert done.status is ResultStatus.SUCCESS
    assert done.provider_id == provider_id
    assert done.seed == 3
    image = _open(await client.download_output(done.outputs[0], max_bytes=MAX_BYTES))
    assert image.size == size


async def test_processing_then_poll_in_real_time() -> None:
    real = Simulator(SimulatorConfig(processing_seconds=0.2))
    base_url = await real.start()
    try:
        async with ModelsLabClient(KEY, base_url, timeout=5.0) as client:
            result = await client.submit(_request("headshot", width=128, height=128))
            assert result.status is ResultStatus.PROCESSING
            assert result.provider_id is not None
            for _ in range(100):
                result = await client.fetch(Operation.HEADSHOT, result.provider_id)
                if result.status is not ResultStatus.PROCESSING:
                    break
                await asyncio.sleep(0.05)
            assert result.status is ResultStatus.SUCCESS
            _open(await client.download_output(result.outputs[0], max_bytes=MAX_BYTES))
    finally:
        await real.stop()


async def test_failed_generation(client: ModelsLabClient, sim: Simulator) -> None:
    sim.config.failure_rate = 1.0
    result = await client.submit(_request("headshot", width=128, height=128))
    assert result.status is ResultStatus.FAILED
    assert result.provider_id in sim.jobs
    assert result.message == "Failed to generate image, please try again."


async def test_failed_after_processing(
    client: ModelsLabClient, sim: Simulator, clock: FakeClock
) -> None:
    sim.config.failure_rate = 1.0
    sim.config.processing_seconds = 5.0
    sim.config.message_field = "messege"
    submitted = await client.submit(_request("facegen", width=128, height=128))
    assert submitted.status is ResultStatus.PROCESSING
    clock.advance(6.0)
    result = await client.fetch(Operation.FACEGEN, submitted.provider_id or "")
    assert result.status is ResultStatus.FAILED
    assert result.message == "Failed to generate image, please try again."


async def test_numbers_as_strings(
    client: ModelsLabClient, sim: Simulator, clock: FakeClock
) -> None:
    sim.config.numbers_as_strings = True
    sim.config.processing_seconds = 12.5
    submitted = await client.submit(_request("flux_headshot", seed=77, width=256, height=256))
    assert submitted.status is ResultStatus.PROCESSING
    assert submitted.eta_seconds == pytest.approx(12.5)
    assert isinstance(submitted.provider_id, str) and submitted.provider_id.isdigit()
    clock.advance(13.0)
    done = await client.fetch(Operation.FLUX_HEADSHOT, submitted.provider_id)
    assert done.status is ResultStatus.SUCCESS
    assert done.seed == 77
    assert isinstance(done.generation_time, float)
    _open(await client.download_output(done.outputs[0], max_bytes=MAX_BYTES))


async def test_base64_output_with_a_data_uri_prefix(
    client: ModelsLabClient, sim: Simulator
) -> None:
    sim.config.base64_data_uri_prefix = True
    sim.config.output_format = "png"
    result = await client.submit(_request("headshot", width=128, height=160))
    image = _open(await client.download_output(result.outputs[0], max_bytes=MAX_BYTES))
    assert (image.format, image.size) == ("PNG", (128, 160))


async def test_plain_image_link(client: ModelsLabClient, sim: Simulator) -> None:
    result = await client.submit(_request("headshot", width=128, height=160))
    plain = sim.jobs[result.provider_id or ""].image_urls[0]  # the proxy link, a .jpg
    data = await client.download_output(plain, max_bytes=MAX_BYTES)
    assert _open(data).format == "JPEG"


# --- refusals -------------------------------------------------------------------------------


async def test_wrong_key(make_client: MakeClient, sim: Simulator) -> None:
    client = make_client(api_key="sk-wrong-key-000000")
    with pytest.raises(AuthenticationFailed) as caught:
        await client.submit(_request("headshot"))
    assert str(caught.value) == "ModelsLab rejected the API key: check MODELSLAB_API_KEY"
    assert not caught.value.retryable
    assert len(_api_calls(sim)) == 1  # never retried
    with pytest.raises(AuthenticationFailed):
        await client.fetch(Operation.HEADSHOT, "123")


@pytest.mark.parametrize(
    ("status", "error", "needle"),
    [
        (402, InsufficientCredits, "top it up"),
        (403, PlanRestricted, "does not include headshot"),
        (400, InvalidRequest, "Bad Request"),
        (422, InvalidRequest, "Unprocessable"),
    ],
)
async def test_refusals_by_http_status(
    client: ModelsLabClient,
    sim: Simulator,
    sleeps: Sleeps,
    status: int,
    error: type[BackendError],
    needle: str,
) -> None:
    sim.config.inject = [status]
    with pytest.raises(error, match=needle) as caught:
        await client.submit(_request("headshot"))
    assert not caught.value.retryable
    assert sleeps.waits == []
    assert _api_calls(sim) == [("/api/v6/image_editing/head_shot", status)]


@pytest.mark.parametrize("as_http_status", [True, False])
@pytest.mark.parametrize("field", ["message", "messege"])
async def test_provider_validation_errors(
    client: ModelsLabClient, sim: Simulator, sleeps: Sleeps, as_http_status: bool, field: str
) -> None:
    sim.config.errors_as_http_status = as_http_status
    sim.config.message_field = field  # type: ignore[assignment]
    with pytest.raises(InvalidRequest) as caught:
        await client.submit(_request("headshot", face=b"definitely not an image"))
    message = str(caught.value)
    assert message.startswith("ModelsLab refused the request: face_image is not a usable image")
    assert len(message) < 300
    assert sleeps.waits == []
    assert [status for _, status in _api_calls(sim)] == [400 if as_http_status else 200]


async def test_fetch_unknown_job(client: ModelsLabClient, sim: Simulator) -> None:
    with pytest.raises(UnknownProviderJob, match="999"):
        await client.fetch(Operation.HEADSHOT, "999")
    result = await client.submit(_request("facegen", width=128, height=128))
    # A face_gen job is not known to the image-editing fetch endpoint.
    with pytest.raises(UnknownProviderJob):
        await client.fetch(Operation.HEADSHOT, result.provider_id or "")
    assert (await client.fetch(Operation.FACEGEN, result.provider_id or "")).status == "success"


# --- retries --------------------------------------------------------------------------------


async def test_rate_limit_is_retried_after_retry_after(
    client: ModelsLabClient, sim: Simulator, sleeps: Sleeps
) -> None:
    sim.config.retry_after = 3
    sim.config.inject = [429, 429]
    result = await client.submit(_request("headshot", width=128, height=128))
    assert result.status is ResultStatus.SUCCESS
    assert len(sleeps.waits) == 2
    assert all(3.0 <= wait <= 3.5 for wait in sleeps.waits)
    assert [status for _, status in _api_calls(sim)] == [429, 429, 200]


async def test_rate_limit_exhausted(
    make_client: MakeClient, sim: Simulator, sleeps: Sleeps
) -> None:
    client = make_client(max_attempts=3)
    sim.config.retry_after = 4
    sim.config.inject = [429] * 5
    with pytest.raises(RateLimited) as caught:
        await client.submit(_request("headshot"))
    assert caught.value.retry_after == 4.0
    assert caught.value.retryable
    assert len(sleeps.waits) == 2
    assert len(_api_calls(sim)) == 3


async def test_the_real_queue_cap(
    client: ModelsLabClient, sim: Simulator, sleeps: Sleeps, clock: FakeClock
) -> None:
    sim.config.max_queued = 1
    sim.config.retry_after = 10
    sim.config.processing_seconds = 100.0
    first = await client.submit(_request("headshot", width=128, height=128))
    assert first.status is ResultStatus.PROCESSING
    with pytest.raises(RateLimited, match="queue"):
        await client.submit(_request("headshot", width=128, height=128))
    assert len(sleeps.waits) == 3  # max_attempts 4: three waits
    clock.advance(101.0)
    second = await client.submit(_request("headshot", width=128, height=128))
    assert second.status is ResultStatus.PROCESSING


async def test_long_retry_after_is_handed_to_the_caller(
    client: ModelsLabClient, sim: Simulator, sleeps: Sleeps
) -> None:
    sim.config.retry_after = 600  # more than max_retry_after (120)
    sim.config.inject = [429]
    with pytest.raises(RateLimited) as caught:
        await client.submit(_request("headshot"))
    assert caught.value.retry_after == 600.0
    assert sleeps.waits == []
    assert len(_api_calls(sim)) == 1


async def test_server_errors_are_retried_with_bounded_backoff(
    make_client: MakeClient, sim: Simulator, sleeps: Sleeps
) -> None:
    client = make_client(backoff_base=0.5, backoff_cap=1.5)
    sim.config.inject = [503, 500, 502]
    result = await client.submit(_request("headshot", width=128, height=128))
    assert result.status is ResultStatus.SUCCESS
    assert [status for _, status in _api_calls(sim)] == [503, 500, 502, 200]
    ceilings = [0.5, 1.0, 1.5]
    assert len(sleeps.waits) == 3
    assert all(0 <= w <= c for w, c in zip(sleeps.waits, ceilings, strict=True))


async def test_server_errors_exhausted(
    client: ModelsLabClient, sim: Simulator, sleeps: Sleeps
) -> None:
    sim.config.inject = [503] * 4
    with pytest.raises(ProviderUnavailable, match=r"\(HTTP 503\); gave up after 4 tries") as caught:
        await client.submit(_request("headshot"))
    assert caught.value.retryable
    assert len(sleeps.waits) == 3
    assert len(_api_calls(sim)) == 4


async def test_fetch_is_retried_too(client: ModelsLabClient, sim: Simulator) -> None:
    result = await client.submit(_request("headshot", width=128, height=128))
    sim.config.inject = [500]
    fetched = await client.fetch(Operation.HEADSHOT, result.provider_id or "")
    assert fetched.status is ResultStatus.SUCCESS
    assert fetched.outputs == result.outputs


async def test_slow_provider_times_out(
    make_client: MakeClient, sim: Simulator, sleeps: Sleeps
) -> None:
    client = make_client(timeout=0.2, max_attempts=2)
    sim.config.delay_seconds = 1.0
    with pytest.raises(ProviderUnavailable, match="did not answer in time"):
        await client.submit(_request("headshot"))
    assert len(sleeps.waits) == 1


UNREACHABLE = "cannot reach ModelsLab at {}: check the network or MODELSLAB_BASE_URL"


def _closed_port() -> int:
    """A loopback port nobody listens on: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_nothing_listening(sleeps: Sleeps) -> None:
    base_url = f"http://127.0.0.1:{_closed_port()}"
    client = ModelsLabClient(KEY, base_url, sleep=sleeps, rng=random.Random(1))
    try:
        with pytest.raises(ProviderUnreachable) as caught:
            await client.fetch(Operation.HEADSHOT, "1")
    finally:
        await client.aclose()
    # Says where it tried and what to check, not that the provider is busy.
    assert str(caught.value) == UNREACHABLE.format(base_url)
    assert caught.value.retryable
    assert len(sleeps.waits) == 3


@pytest.mark.parametrize("host", ["127.0.0.1:{port}", "modelslab.invalid"])
async def test_unreachable_gives_up_after_one_try_when_asked(sleeps: Sleeps, host: str) -> None:
    base_url = "http://" + host.format(port=_closed_port())
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with ModelsLabClient(KEY, base_url, sleep=sleeps, quick_unreachable=True) as client:
        with pytest.raises(ProviderUnreachable) as caught:
            await client.submit(_request("headshot"))
    assert str(caught.value) == UNREACHABLE.format(base_url)
    assert not caught.value.retryable  # the engine gives up too, instead of its own rounds
    assert sleeps.waits == []
    assert loop.time() - started < 5


async def test_quick_mode_still_retries_a_busy_provider(
    make_client: MakeClient, sim: Simulator, sleeps: Sleeps
) -> None:
    client = make_client(quick_unreachable=True)
    sim.config.inject = [503, 500]
    result = await client.submit(_request("headshot", width=128, height=128))
    assert result.status is ResultStatus.SUCCESS
    assert len(sleeps.waits) == 2


async def test_unreachable_message_hides_credentials_in_the_base_url(sleeps: Sleeps) -> None:
    base_url = f"http://proxyuser:proxy-pass-123@127.0.0.1:{_closed_port()}/ml"
    async with ModelsLabClient(KEY, base_url, sleep=sleeps, quick_unreachable=True) as client:
        with pytest.raises(ProviderUnreachable) as caught:
            await client.fetch(Operation.HEADSHOT, "1")
    message = str(caught.value)
    assert "proxy-pass-123" not in message and "proxyuser" not in message
    assert message.startswith("cannot reach ModelsLab at http://127.0.0.1:")


# --- outputs --------------------------------------------------------------------------------


async def test_expired_output_link(
    client: ModelsLabClient, sim: Simulator, clock: FakeClock
) -> None:
    sim.config.link_ttl_seconds = 3600.0
    result = await client.submit(_request("headshot", width=128, height=128))
    await client.download_output(result.outputs[0], max_bytes=MAX_BYTES)
    clock.advance(3601.0)
    with pytest.raises(OutputUnavailable, match="the output link has expired"):
        await client.download_output(result.outputs[0], max_bytes=MAX_BYTES)


async def test_output_too_large(client: ModelsLabClient, sim: Simulator) -> None:
    result = await client.submit(_request("headshot", width=256, height=256))
    url = result.outputs[0]
    size = len(await client.download_output(url, max_bytes=MAX_BYTES))
    assert await client.download_output(url, max_bytes=size) is not None  # exactly the cap
    with pytest.raises(OutputTooLarge, match=f"larger than {size - 1} bytes"):
        await client.download_output(url, max_bytes=size - 1)
    plain = sim.jobs[result.provider_id or ""].image_urls[0]
    with pytest.raises(OutputTooLarge):
        await client.download_output(plain, max_bytes=100)


async def test_pending_html_page_is_not_ready_yet(client: ModelsLabClient, sim: Simulator) -> None:
    sim.config.processing_seconds = 30.0
    sim.config.pending_links = "html"
    submitted = await client.submit(_request("headshot", width=128, height=128))
    future = sim.jobs[submitted.provider_id or ""].output_urls[0]
    with pytest.raises(ProviderUnavailable, match="not ready yet"):
        await client.download_output(future, max_bytes=MAX_BYTES)


async def test_missing_output(client: ModelsLabClient, sim: Simulator) -> None:
    assert sim.base_url is not None
    with pytest.raises(OutputUnavailable):
        await client.download_output(f"{sim.base_url}/sim/outputs/1/0.jpg", max_bytes=10)
    with pytest.raises(OutputUnavailable):
        await client.download_output(f"{sim.base_url}/elsewhere", max_bytes=10)


async def test_output_host_down(sleeps: Sleeps) -> None:
    base_url = f"http://127.0.0.1:{_closed_port()}"  # the trusted origin, so it is dialled
    async with ModelsLabClient(KEY, base_url, sleep=sleeps) as client:
        with pytest.raises(ProviderUnavailable, match="could not download"):
            await client.download_output(f"{base_url}/x.base64", max_bytes=10)


# --- output links may reach only public addresses, and the configured origin ----------------


@dataclass
class Bystander:
    """A server on loopback that no output link may reach, and the paths it was asked for."""

    port: int = 0
    asked: list[str] = field(default_factory=list)


@pytest.fixture
async def bystander() -> AsyncIterator[Bystander]:
    state = Bystander()

    async def anything(request: web.Request) -> web.Response:
        state.asked.append(request.path)
        return web.Response(body=b"\x89PNG-internal", content_type="image/png")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", anything)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = int(runner.addresses[0][1])
    try:
        yield state
    finally:
        await runner.cleanup()


PRIVATE_OUTPUT = "the output link leads to a private network address"


@pytest.mark.parametrize(
    "link",
    [
        "http://127.0.0.1:{port}/o/1.png",  # loopback, but not the configured origin
        "http://localhost:{port}/o/1.png",  # a name resolving to loopback
        "http://[::1]:{port}/o/1.png",
        "http://10.0.0.1/o/1.png",
        "http://169.254.169.254/latest/meta-data",
        "http://[fec0::1]/o/1.png",
        "http://[::ffff:127.0.0.1]:{port}/o/1.png",
    ],
)
async def test_output_link_to_a_private_address_is_refused(
    client: ModelsLabClient, bystander: Bystander, link: str
) -> None:
    with pytest.raises(OutputUnavailable, match=PRIVATE_OUTPUT) as caught:
        await client.download_output(link.format(port=bystander.port), max_bytes=MAX_BYTES)
    assert not caught.value.retryable
    assert bystander.asked == []


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/o.png", "http://localhost:{port}/"])
async def test_output_redirect_to_a_private_address_is_refused(
    scripted: Scripted, scripted_client: ModelsLabClient, bystander: Bystander, target: str
) -> None:
    """The provider's fetch answer points at its own origin (allowed), which redirects to a
    loopback server that is not the provider: refused before connecting."""
    scripted.add(body={"status": "success", "id": 5, "output": [f"{scripted.base_url}/o/5.png"]})
    scripted.add(302, text="", headers={"Location": target.format(port=bystander.port)})
    result = await scripted_client.fetch(Operation.HEADSHOT, "5")
    with pytest.raises(OutputUnavailable, match=PRIVATE_OUTPUT):
        await scripted_client.download_output(result.outputs[0], max_bytes=MAX_BYTES)
    assert scripted.paths == ["/api/v6/image_editing/fetch/5", "/o/5.png"]
    assert bystander.asked == []


async def test_output_redirect_loop_is_cut(
    scripted: Scripted, scripted_client: ModelsLabClient
) -> None:
    scripted.add(302, text="", headers={"Location": "/o/again.png"}, times=10)
    with pytest.raises(OutputUnavailable, match="redirects too many times"):
        await scripted_client.download_output(f"{scripted.base_url}/o/1.png", max_bytes=100)
    assert len(scripted.paths) == 6


@pytest.mark.parametrize("headers", [{}, {"Location": "http://[::1"}])
async def test_output_redirect_to_nowhere_is_refused(
    scripted: Scripted, scripted_client: ModelsLabClient, headers: dict[str, str]
) -> None:
    scripted.add(302, text="", headers=headers)
    with pytest.raises(OutputUnavailable, match="redirects nowhere valid") as caught:
        await scripted_client.download_output(f"{scripted.base_url}/o/1.png", max_bytes=100)
    assert not caught.value.retryable
    assert scripted.paths == ["/o/1.png"]


# --- the key never leaks --------------------------------------------------------------------


def _texts(exc: BaseException) -> list[str]:
    texts = ["".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return texts


async def test_the_key_never_reaches_logs_or_errors(
    caplog: pytest.LogCaptureFixture,
    make_client: MakeClient,
    sim: Simulator,
    clock: FakeClock,
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("httpx", "httpcore", "aiohttp", "backends"):
        caplog.set_level(logging.DEBUG, logger=name)  # put back after the test
    wrong = "sk-wrong-SECRET-111122223333"
    client = make_client(max_attempts=2)
    errors: list[BaseException] = []
    results: list[ProviderResult] = []

    async def attempt(call: Callable[[], Awaitable[Any]]) -> None:
        try:
            value = await call()
        except BackendError as exc:
            errors.append(exc)
        else:
            if isinstance(value, ProviderResult):
                results.append(value)

    ok = await client.submit(_request("headshot", width=128, height=128))
    results.append(ok)
    await attempt(lambda: client.download_output(ok.outputs[0], max_bytes=MAX_BYTES))
    await attempt(lambda: client.download_output(ok.outputs[0], max_bytes=10))
    sim.config.processing_seconds = 5.0
    await attempt(lambda: client.submit(_request("facegen", width=128, height=128)))
    clock.advance(6.0)
    for job_id in list(sim.jobs):
        await attempt(lambda job_id=job_id: client.fetch(Operation.FACEGEN, job_id))
    sim.config.processing_seconds = 0.0
    await attempt(lambda: client.fetch(Operation.AVATAR, "nope"))
    for status in (400, 401, 402, 403, 429, 500, 503):
        sim.config.inject = [status, status]
        await attempt(lambda: client.submit(_request("headshot")))
    sim.config.inject = []
    sim.config.errors_as_http_status = False
    sim.config.message_field = "messege"
    await attempt(lambda: client.submit(_request("avatar", face=b"garbage")))
    sim.config.failure_rate = 1.0
    await attempt(lambda: client.submit(_request("flux_headshot", width=128, height=128)))
    sim.config.failure_rate = 0.0
    await attempt(lambda: make_client(api_key=wrong).submit(_request("headshot")))
    await attempt(lambda: make_client(timeout=0.1, max_attempts=1).fetch(Operation.FACEGEN, "1"))
    sim.config.delay_seconds = 0.5
    await attempt(lambda: make_client(timeout=0.1, max_attempts=2).submit(_request("headshot")))
    sim.config.delay_seconds = 0.0
    clock.advance(10 * 86400.0)
    await attempt(lambda: client.download_output(ok.outputs[0], max_bytes=MAX_BYTES))
    async with ModelsLabClient(KEY, "http://127.0.0.1:9", max_attempts=1) as dead:
        await attempt(lambda: dead.fetch(Operation.HEADSHOT, "1"))

    kinds = {type(exc) for exc in errors}
    assert kinds >= {
        AuthenticationFailed,
        InsufficientCredits,
        InvalidRequest,
        OutputTooLarge,
        OutputUnavailable,
        PlanRestricted,
        ProviderUnavailable,
        RateLimited,
        UnknownProviderJob,
    }
    assert caplog.records, "expected some logging to inspect"
    assert any(record.name.startswith("backends.modelslab.client") for record in caplog.records)
    for secret in (KEY, wrong):
        assert secret not in caplog.text
        for record in caplog.records:
            assert secret not in record.getMessage()
            assert secret not in repr(record.args)
        for exc in errors:
            for text in _texts(exc):
                assert secret not in text
        for result in results:
            assert secret not in repr(result)
        assert secret not in repr(client)


# --- shapes the simulator does not produce, from a scripted server on a real socket ---------


class Scripted:
    """A loopback HTTP server answering each request with the next scripted reply."""

    def __init__(self) -> None:
        self.replies: list[Callable[[], web.StreamResponse]] = []
        self.paths: list[str] = []
        # Each request's client address: the TCP connection it came over.
        self.peers: list[object] = []
        # Each request's Host and Proxy-Authorization headers.
        self.hosts: list[str | None] = []
        self.proxy_credentials: list[str | None] = []
        self.base_url = ""

    def add(
        self,
        status: int = 200,
        body: object = None,
        *,
        text: str | bytes | None = None,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        times: int = 1,
    ) -> None:
        if text is None:
            text = json.dumps(body)
        raw = text.encode() if isinstance(text, str) else text

        def reply() -> web.StreamResponse:
            return web.Response(status=status, body=raw, content_type=content_type, headers=headers)

        self.replies += [reply] * times

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.paths.append(request.path)
        self.peers.append(request.transport and request.transport.get_extra_info("peername"))
        self.hosts.append(request.headers.get("Host"))
        self.proxy_credentials.append(request.headers.get("Proxy-Authorization"))
        return self.replies.pop(0)()


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    server = Scripted()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", server.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    server.base_url = f"http://{host}:{port}"
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def scripted_client(scripted: Scripted, sleeps: Sleeps) -> AsyncIterator[ModelsLabClient]:
    async with ModelsLabClient(
        KEY, scripted.base_url, timeout=5.0, rng=random.Random(3), sleep=sleeps
    ) as client:
        yield client


SUCCESS = {"status": "success", "id": 5, "output": ["http://127.0.0.1:1/a.png"]}


async def test_rate_limit_in_a_200_body(
    scripted: Scripted, scripted_client: ModelsLabClient, sleeps: Sleeps
) -> None:
    scripted.add(body={"status": "error", "messege": "Rate limit exceeded", "retry_after": "2"})
    scripted.add(body=SUCCESS)
    result = await scripted_client.submit(_request("headshot"))
    assert result.provider_id == "5"
    assert len(sleeps.waits) == 1 and 2.0 <= sleeps.waits[0] <= 2.5


async def test_retry_after_header_and_default(
    scripted: Scripted, scripted_client: ModelsLabClient, sleeps: Sleeps
) -> None:
    scripted.add(429, text="", content_type="text/plain", headers={"Retry-After": "7"})
    scripted.add(body=SUCCESS)
    await scripted_client.submit(_request("headshot"))
    assert 7.0 <= sleeps.waits[0] <= 7.5
    scripted.add(429, text="too many", content_type="text/plain", times=4)
    with pytest.raises(RateLimited) as caught:
        await scripted_client.submit(_request("headshot"))
    assert caught.value.retry_after == 30.0  # nothing said: the documented example's 30 s
    assert all(wait <= 4.0 for wait in sleeps.waits[1:])  # plain backoff meanwhile


@pytest.mark.parametrize(
    "garbled",
    [
        {"text": "<html><body>Bad gateway</body></html>", "content_type": "text/html"},
        {"body": ["not", "an", "object"]},
        {"body": {"status": "queued?"}},
        {"text": b"\x00\xff\x10", "content_type": "application/octet-stream"},
    ],
)
async def test_garbled_answers_are_retried_then_unavailable(
    scripted: Scripted,
    scripted_client: ModelsLabClient,
    sleeps: Sleeps,
    garbled: dict[str, Any],
) -> None:
    scripted.add(**garbled)
    scripted.add(body=SUCCESS)
    assert (await scripted_client.submit(_request("headshot"))).provider_id == "5"
    scripted.add(**garbled, times=4)
    with pytest.raises(ProviderUnavailable, match="unreadable answer") as caught:
        await scripted_client.fetch(Operation.HEADSHOT, "5")
    assert caught.value.__context__ is None and caught.value.__cause__ is None


@pytest.mark.parametrize(
    ("reply", "error", "needle"),
    [
        ({"body": {"status": "error", "message": "Invalid API key"}}, AuthenticationFailed, "key"),
        (
            {"body": {"status": "error", "message": "Insufficient credits"}},
            InsufficientCredits,
            "top it up",
        ),
        (
            {"body": {"status": "error", "message": "Upgrade your plan"}},
            PlanRestricted,
            "upgrade",
        ),
        (
            {"body": {"status": "failed", "message": {"prompt": ["The prompt is invalid."]}}},
            InvalidRequest,
            "refused the request: prompt: The prompt is invalid.",
        ),
        ({"body": {"status": "error"}}, InvalidRequest, "without saying why"),
        (
            {"status": 400, "text": "<html>nope</html>", "content_type": "text/html"},
            InvalidRequest,
            r"\(HTTP 400\)",
        ),
        ({"status": 404, "body": {"message": "Not Found"}}, InvalidRequest, "check the base URL"),
        ({"status": 401, "text": ""}, AuthenticationFailed, "MODELSLAB_API_KEY"),
        (
            {"body": {"status": "processing", "eta": 3}},
            ProviderUnavailable,
            "gave no job id",
        ),
    ],
)
async def test_error_bodies_on_submit(
    scripted: Scripted,
    scripted_client: ModelsLabClient,
    sleeps: Sleeps,
    reply: dict[str, Any],
    error: type[BackendError],
    needle: str,
) -> None:
    scripted.add(**reply)
    with pytest.raises(error, match=needle):
        await scripted_client.submit(_request("headshot"))
    assert sleeps.waits == []
    assert len(scripted.paths) == 1


async def test_an_echoed_key_is_redacted_and_long_messages_cut(
    scripted: Scripted, scripted_client: ModelsLabClient
) -> None:
    scripted.add(body={"status": "error", "message": f"bad request for {KEY}: " + "z" * 1000})
    with pytest.raises(InvalidRequest) as caught:
        await scripted_client.submit(_request("headshot"))
    message = str(caught.value)
    assert KEY not in message and "[redacted]" in message
    assert len(message) < 260


async def test_fetch_answers(scripted: Scripted, scripted_client: ModelsLabClient) -> None:
    scripted.add(body={"status": "error", "message": "Request not found"})
    with pytest.raises(UnknownProviderJob):
        await scripted_client.fetch(Operation.FACEGEN, "77")
    scripted.add(body={"status": "failed", "messege": "GPU fell over"})
    result = await scripted_client.fetch(Operation.FACEGEN, "77")
    assert result == ProviderResult(
        status=ResultStatus.FAILED, provider_id="77", message="GPU fell over"
    )
    scripted.add(410, body={"status": "error", "message": "gone"})
    with pytest.raises(UnknownProviderJob):
        await scripted_client.fetch(Operation.FACEGEN, "77")
    scripted.add(body={"status": "processing", "id": "77", "eta": "4.5", "output": ""})
    result = await scripted_client.fetch(Operation.FLUX_HEADSHOT, "77")
    assert (result.status, result.eta_seconds) == (ResultStatus.PROCESSING, 4.5)
    assert scripted.paths == [
        "/api/v1/enterprise/face_gen/fetch/77",
        "/api/v1/enterprise/face_gen/fetch/77",
        "/api/v1/enterprise/face_gen/fetch/77",
        "/api/v1/enterprise/flux_headshot/fetch/77",
    ]


@pytest.mark.parametrize(
    ("reply", "error", "needle"),
    [
        ({"status": 410, "text": "gone"}, OutputUnavailable, "expired"),
        ({"status": 403, "text": "denied"}, OutputUnavailable, "HTTP 403"),
        ({"status": 500, "text": "oops"}, ProviderUnavailable, "HTTP 500"),
        (
            {"text": "<html>processing</html>", "content_type": "text/html"},
            ProviderUnavailable,
            "not ready yet",
        ),
        (
            {"text": "x" * 2000, "content_type": "image/png"},
            OutputTooLarge,
            "larger than 1000 bytes",
        ),
    ],
)
async def test_download_answers(
    scripted: Scripted,
    scripted_client: ModelsLabClient,
    reply: dict[str, Any],
    error: type[BackendError],
    needle: str,
) -> None:
    scripted.add(**reply)
    with pytest.raises(error, match=needle):
        await scripted_client.download_output(f"{scripted.base_url}/o/1.png", max_bytes=1000)


async def test_download_caps_the_decompressed_size(
    scripted: Scripted, scripted_client: ModelsLabClient
) -> None:
    bomb = gzip.compress(b"\0" * 1_000_000)
    scripted.add(text=bomb, content_type="image/png", headers={"Content-Encoding": "gzip"})
    with pytest.raises(OutputTooLarge):
        await scripted_client.download_output(f"{scripted.base_url}/o/1.png", max_bytes=50_000)


async def test_download_base64_quirks(scripted: Scripted, scripted_client: ModelsLabClient) -> None:
    url = f"{scripted.base_url}/o/1.base64?sig=abc"
    scripted.add(text="%%% not base64 %%%", content_type="text/plain")
    with pytest.raises(OutputUnavailable, match="not valid base64"):
        await scripted_client.download_output(url, max_bytes=1000)
    scripted.add(text="data:image/png;base64," + base64.b64encode(b"P" * 900).decode())
    assert await scripted_client.download_output(url, max_bytes=900) == b"P" * 900
    scripted.add(text=base64.b64encode(b"P" * 901).decode(), content_type="text/plain")
    with pytest.raises(OutputTooLarge, match="larger than 900 bytes"):
        await scripted_client.download_output(url, max_bytes=900)


async def test_download_follows_redirects(
    scripted: Scripted, scripted_client: ModelsLabClient
) -> None:
    scripted.add(302, text="", headers={"Location": "/o/real.png"})
    scripted.add(text=b"\x89PNG-bytes", content_type="image/png")
    data = await scripted_client.download_output(f"{scripted.base_url}/o/1.png", max_bytes=100)
    assert data == b"\x89PNG-bytes"
    assert scripted.paths == ["/o/1.png", "/o/real.png"]


# --- what a watcher hears -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("inject", "heard"),
    [
        ([], ["ok"]),
        ([429, 429], ["rate_limited", "rate_limited", "ok"]),
        ([500, 503], ["server_error", "server_error", "ok"]),
        ([504], ["timeout", "ok"]),
        ([401], ["refused_key"]),
        ([402], ["refused_key"]),
        ([403], ["refused_key"]),
    ],
)
async def test_every_call_is_heard_with_how_it_ended(
    make_client: MakeClient, sim: Simulator, inject: list[int], heard: list[str]
) -> None:
    outcomes: list[str] = []
    client = make_client(on_call=outcomes.append)
    sim.config.inject = list(inject)
    with contextlib.suppress(BackendError):
        await client.submit(_request("headshot"))
    assert outcomes == heard
    assert len(outcomes) == len(_api_calls(sim))


async def test_a_refused_request_and_a_failed_job_are_heard_as_such(
    make_client: MakeClient, sim: Simulator
) -> None:
    outcomes: list[str] = []
    client = make_client(on_call=outcomes.append)
    with pytest.raises(InvalidRequest):
        await client.submit(_request("headshot", face=b"definitely not an image"))
    assert outcomes == ["invalid_request"]
    # A job the provider reports failed is an answer about the job: the engine counts it.
    sim.config.failure_rate = 1.0
    outcomes.clear()
    result = await client.submit(_request("headshot"))
    assert result.status is ResultStatus.FAILED and outcomes == []


async def test_nothing_listening_is_heard_as_unreachable(sleeps: Sleeps) -> None:
    outcomes: list[str] = []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ModelsLabClient(
        KEY, f"http://127.0.0.1:{port}", sleep=sleeps, max_attempts=2, on_call=outcomes.append
    )
    try:
        with pytest.raises(ProviderUnreachable):
            await client.submit(_request("headshot"))
    finally:
        await client.aclose()
    assert outcomes == ["unreachable", "unreachable"]


async def test_api_calls_reuse_one_kept_alive_connection(
    scripted: Scripted, scripted_client: ModelsLabClient
) -> None:
    """Calls one after another go over one TCP connection to the provider, kept open between
    them: no connect (and no TLS handshake, on https) per call."""
    scripted.add(body={"status": "processing", "id": 7, "output": "", "eta": 5}, times=10)
    for _ in range(10):
        result = await scripted_client.fetch(Operation.HEADSHOT, "7")
        assert result.status is ResultStatus.PROCESSING
        await asyncio.sleep(0.05)
    assert len(scripted.peers) == 10
    assert len(set(scripted.peers)) == 1, scripted.peers


async def test_a_burst_of_first_calls_opens_one_session(
    scripted: Scripted, scripted_client: ModelsLabClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twenty calls at once on a fresh client: the environment's proxy is looked up, and
    certifi's bundle read into a TLS context, once for all of them. Each used to do both,
    milliseconds of CPU apiece, while the session did not exist yet."""
    opened: list[str] = []

    def counted(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            opened.append(name)
            return real(*args)

        return call

    for name in ("certifi_context", "_env_proxy"):
        monkeypatch.setattr(client_module, name, counted(name, getattr(client_module, name)))
    scripted.add(body={"status": "processing", "id": 7, "output": "", "eta": 5}, times=20)
    results = await asyncio.gather(
        *(scripted_client.fetch(Operation.HEADSHOT, "7") for _ in range(20))
    )
    assert [r.status for r in results] == [ResultStatus.PROCESSING] * 20
    assert sorted(opened) == ["_env_proxy", "certifi_context"]


@pytest.mark.parametrize("credentials", ["", "operator:proxy-secret@"])
async def test_api_calls_go_through_the_environments_proxy(
    scripted: Scripted, sleeps: Sleeps, monkeypatch: pytest.MonkeyPatch, credentials: str
) -> None:
    """HTTP_PROXY names the scripted server; the provider's name is never resolved here."""
    proxy = scripted.base_url.replace("http://", f"http://{credentials}")
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    scripted.add(body=SUCCESS, times=2)
    async with ModelsLabClient(KEY, "http://modelslab.invalid", sleep=sleeps) as client:
        await client.fetch(Operation.HEADSHOT, "5")
        await client.fetch(Operation.HEADSHOT, "5")
    assert scripted.paths == ["/api/v6/image_editing/fetch/5"] * 2
    assert scripted.hosts == ["modelslab.invalid"] * 2
    expected = f"Basic {base64.b64encode(b'operator:proxy-secret').decode()}"
    assert scripted.proxy_credentials == [expected if credentials else None] * 2


async def test_no_proxy_sends_api_calls_direct(
    scripted: Scripted, sleeps: Sleeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    scripted.add(body=SUCCESS)
    async with ModelsLabClient(KEY, scripted.base_url, sleep=sleeps) as client:
        await client.fetch(Operation.HEADSHOT, "5")
    assert scripted.proxy_credentials == [None]
