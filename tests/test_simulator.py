"""The ModelsLab simulator over real loopback sockets: endpoints, quirks, limits, webhooks."""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageStat

from backends.modelslab import simulated_images
from backends.modelslab.simulator import (
    Simulator,
    SimulatorConfig,
    StrangerError,
    is_stranger,
    serve,
)
from bot.cli import main

KEY = "sk-sim-test-0123456789"
SKIN = (224, 172, 140)
BACKGROUND = (40, 70, 160)
SUBMIT = {
    "headshot": "/api/v6/image_editing/head_shot",
    "avatar": "/api/v6/image_editing/avatar_gen",
    "facegen": "/api/v1/enterprise/face_gen/make_gen",
    "flux_headshot": "/api/v1/enterprise/flux_headshot/make_gen",
}
FETCH = {
    "headshot": "/api/v6/image_editing/fetch",
    "avatar": "/api/v6/image_editing/fetch",
    "facegen": "/api/v1/enterprise/face_gen/fetch",
    "flux_headshot": "/api/v1/enterprise/flux_headshot/fetch",
}
DEFAULT_SIZE = {
    "headshot": (384, 512),  # the selfie's own size
    "avatar": (512, 768),
    "facegen": (512, 768),
    "flux_headshot": (1024, 1024),
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@cache
def selfie_bytes() -> bytes:
    """A blue room with a skin-coloured face well left of centre (the fallback would miss it)."""
    image = Image.new("RGB", (384, 512), BACKGROUND)
    ImageDraw.Draw(image).ellipse((40, 170, 180, 360), fill=SKIN)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def request_body(operation: str, **overrides: Any) -> dict[str, Any]:
    image_field = "init_image" if operation == "avatar" else "face_image"
    body: dict[str, Any] = {
        "key": KEY,
        "prompt": "professional corporate headshot, studio lighting",
        image_field: data_uri(selfie_bytes()),
        "base64": True,
    }
    if operation == "facegen":
        body.update(safety_checker=True, s_scale=1.0, seed=11)
    if operation == "flux_headshot":
        body.update(seed=11)
    body.update(overrides)
    return body


def decode_output(response: httpx.Response) -> Image.Image:
    assert response.status_code == 200, response.text
    text = response.text
    if text.startswith("data:"):
        text = text.split(",", 1)[1]
    return Image.open(io.BytesIO(base64.b64decode(text, validate=True)))


async def wait_for(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


@dataclass
class Receiver:
    """A loopback HTTP server: collects webhook posts and serves the selfie."""

    url: str = ""
    posts: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def config() -> SimulatorConfig:
    return SimulatorConfig(seed=7, tick_seconds=0.01)


@pytest.fixture
async def sim(config: SimulatorConfig, clock: FakeClock) -> AsyncIterator[Simulator]:
    simulator = Simulator(config, clock=clock)
    await simulator.start()
    yield simulator
    await simulator.stop()


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[httpx.AsyncClient]:
    assert sim.base_url is not None
    async with httpx.AsyncClient(base_url=sim.base_url, trust_env=False, timeout=10) as client:
        yield client


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()

    async def hook(request: web.Request) -> web.Response:
        state.posts.append(await request.json())
        return web.Response(text="ok")

    async def selfie(_request: web.Request) -> web.Response:
        return web.Response(body=selfie_bytes(), content_type="image/jpeg")

    async def not_image(_request: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_post("/hook/{token}", hook)
    app.router.add_get("/selfie.jpg", selfie)
    app.router.add_get("/text.jpg", not_image)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield state
    await runner.cleanup()


# -- submit and fetch --------------------------------------------------------------------------


@pytest.mark.parametrize("operation", list(SUBMIT))
async def test_immediate_success(operation: str, sim: Simulator, client: httpx.AsyncClient) -> None:
    response = await client.post(SUBMIT[operation], json=request_body(operation))
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "success"
    assert body["nsfw_content_detected"] is False
    assert isinstance(body["id"], int) and isinstance(body["generationTime"], float)
    assert len(body["output"]) == len(body["proxy_links"]) == 1
    assert body["output"][0].endswith("/0.base64")
    assert isinstance(body["meta"]["seed"], int)  # a random seed when none was sent
    assert body["meta"]["prompt"].startswith("professional")
    image = decode_output(await client.get(body["output"][0]))
    assert image.format == "JPEG"
    assert image.size == DEFAULT_SIZE[operation]
    proxied = await client.get(body["proxy_links"][0])
    assert proxied.headers["content-type"] == "image/jpeg"

    job = sim.jobs[str(body["id"])]
    assert job.op == operation and job.status == "success"
    assert job.key_hash != KEY and KEY not in repr(job)

    fetched = await client.post(f"{FETCH[operation]}/{body['id']}", json={"key": KEY})
    assert fetched.json()["status"] == "success"
    assert fetched.json()["output"] == body["output"]


@pytest.mark.parametrize("operation", list(SUBMIT))
async def test_processing_then_fetch(
    operation: str,
    sim: Simulator,
    config: SimulatorConfig,
    clock: FakeClock,
    client: httpx.AsyncClient,
) -> None:
    config.processing_seconds = 30.0
    body = (await client.post(SUBMIT[operation], json=request_body(operation))).json()
    assert body["status"] == "processing"
    assert body["eta"] == 30.0
    assert body["output"] == []
    assert body["message"] and body["tip"]
    assert body["meta"]["width"] == DEFAULT_SIZE[operation][0]
    assert body["fetch_result"] == f"{sim.base_url}{FETCH[operation]}/{body['id']}"
    future = body["future_links"]
    assert len(future) == 1
    assert (await client.get(future[0])).status_code == 404

    clock.advance(10)
    pending = (await client.post(body["fetch_result"], json={"key": KEY})).json()
    assert pending["status"] == "processing"
    assert pending["output"] == ""
    assert pending["eta"] == 20.0

    clock.advance(20)
    done = (await client.post(body["fetch_result"], json={"key": KEY})).json()
    assert done["status"] == "success"
    assert done["output"] == future
    assert decode_output(await client.get(future[0])).size == DEFAULT_SIZE[operation]


async def test_complete_now_finishes_a_processing_job(
    sim: Simulator, config: SimulatorConfig, client: httpx.AsyncClient
) -> None:
    config.processing_seconds = 300.0
    body = (await client.post(SUBMIT["headshot"], json=request_body("headshot"))).json()
    sim.complete_now(str(body["id"]))
    fetched = (await client.post(body["fetch_result"], json={"key": KEY})).json()
    assert fetched["status"] == "success"


async def test_failed_jobs(
    sim: Simulator, config: SimulatorConfig, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    config.failure_rate = 1.0
    body = (await client.post(SUBMIT["headshot"], json=request_body("headshot"))).json()
    assert body["status"] == "failed" and body["message"]

    config.processing_seconds = 5.0
    body = (await client.post(SUBMIT["facegen"], json=request_body("facegen"))).json()
    assert body["status"] == "processing" and len(body["future_links"]) == 1
    clock.advance(5)
    fetched = (await client.post(body["fetch_result"], json={"key": KEY})).json()
    assert fetched["status"] == "failed"
    assert (await client.get(body["future_links"][0])).status_code == 404


async def test_unknown_id_wrong_path_and_other_key_answer_404(
    config: SimulatorConfig, client: httpx.AsyncClient
) -> None:
    missing = await client.post(f"{FETCH['headshot']}/123", json={"key": KEY})
    assert missing.status_code == 404
    assert missing.json()["status"] == "error"

    headshot = (await client.post(SUBMIT["headshot"], json=request_body("headshot"))).json()
    job_id = headshot["id"]
    for wrong in (FETCH["facegen"], FETCH["flux_headshot"]):
        assert (await client.post(f"{wrong}/{job_id}", json={"key": KEY})).status_code == 404
    other_key = await client.post(f"{FETCH['headshot']}/{job_id}", json={"key": "someone-else"})
    assert other_key.status_code == 404
    assert (await client.get("/sim/outputs/999/0.jpg")).status_code == 404
    assert (await client.get(f"/sim/outputs/{job_id}/1.base64")).status_code == 404


async def test_bad_key_is_401_and_never_echoed(
    config: SimulatorConfig, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    config.api_keys = frozenset({KEY})
    wrong = "sk-wrong-key-abcdef"
    for path in (SUBMIT["headshot"], f"{FETCH['headshot']}/1"):
        response = await client.post(path, json=request_body("headshot", key=wrong))
        assert response.status_code == 401
        assert response.json() == {"status": "error", "message": "Invalid API key"}
    no_key = await client.post(SUBMIT["headshot"], json={"prompt": "x"})
    assert no_key.status_code == 401
    ok = await client.post(SUBMIT["headshot"], json=request_body("headshot"))
    assert ok.json()["status"] == "success"
    assert KEY not in ok.text
    assert KEY not in caplog.text and wrong not in caplog.text


async def test_system_details(client: httpx.AsyncClient) -> None:
    for service in ("face_gen", "flux_headshot"):
        response = await client.post(
            f"/api/v1/enterprise/{service}/system_details", json={"key": KEY}
        )
        assert response.json()["status"] == "success"
        assert "queue_time" in response.json() and "model_count" in response.json()
    unknown = await client.post("/api/v1/enterprise/nope/system_details", json={"key": KEY})
    assert unknown.status_code == 404


# -- parameters ------------------------------------------------------------------------------

LIMIT_CASES = [
    ("headshot", {"width": 1024}, "width"),
    ("headshot", {"height": "800"}, "height"),
    ("headshot", {"num_inference_steps": 20}, "num_inference_steps"),
    ("headshot", {"samples": 3}, "samples"),
    ("headshot", {"s_scale": "2.5"}, "s_scale"),
    ("headshot", {"guidance_scale": 9}, "guidance_scale"),
    ("headshot", {"safety_checker_type": "shred"}, "safety_checker_type"),
    ("headshot", {"width": "wide"}, "width"),
    ("headshot", {"prompt": None}, "prompt"),
    ("headshot", {"face_image": None}, "face_image"),
    ("avatar", {"pose_strength": 1.5}, "pose_strength"),
    ("avatar", {"identitynet_strength_ratio": -0.1}, "identitynet_strength_ratio"),
    ("avatar", {"controlnet_selection": ["openpose"]}, "controlnet_selection"),
    ("facegen", {"seed": None}, "seed"),
    ("facegen", {"s_scale": None}, "s_scale"),
    ("facegen", {"safety_checker": None}, "safety_checker"),
    ("facegen", {"height": 1024}, "height"),
    ("flux_headshot", {"num_inference_steps": 27}, "num_inference_steps"),
    ("flux_headshot", {"guidance_scale": 11}, "guidance_scale"),
    ("flux_headshot", {"width": 4096}, "width"),
    ("flux_headshot", {"seed": None}, "seed"),
    ("headshot", {"webhook": "ftp://example.test/hook"}, "webhook"),
]


@pytest.mark.parametrize("as_http_status", [True, False])
async def test_limits_are_enforced_naming_the_field(
    as_http_status: bool, config: SimulatorConfig, client: httpx.AsyncClient
) -> None:
    config.errors_as_http_status = as_http_status
    for operation, overrides, field_name in LIMIT_CASES:
        response = await client.post(SUBMIT[operation], json=request_body(operation, **overrides))
        assert response.status_code == (400 if as_http_status else 200), (operation, overrides)
        body = response.json()
        assert body["status"] == "error"
        assert field_name in body["message"], (field_name, body["message"])


async def test_numbers_as_strings_are_accepted(client: httpx.AsyncClient) -> None:
    body = request_body(
        "avatar",
        width="256",
        height="384",
        samples="2",
        num_inference_steps="31",
        guidance_scale="7.5",
        pose_strength="0.5",
        controlnet_selection="pose,canny",
        seed="42",
        base64="true",
    )
    answer = (await client.post(SUBMIT["avatar"], json=body)).json()
    assert answer["status"] == "success"
    meta = answer["meta"]
    assert (meta["width"], meta["height"], meta["seed"]) == (256, 384, 42)
    assert meta["controlnet_selection"] == ["pose", "canny"]
    assert len(answer["output"]) == 2
    assert decode_output(await client.get(answer["output"][1])).size == (256, 384)


async def test_headshot_quirk_one_image_at_512x768(client: httpx.AsyncClient) -> None:
    async def outputs(operation: str, **size: int) -> int:
        body = request_body(operation, samples=2, **size)
        return len((await client.post(SUBMIT[operation], json=body)).json()["output"])

    assert await outputs("headshot", width=512, height=768) == 1
    assert await outputs("headshot", width=256, height=384) == 2
    assert await outputs("avatar", width=512, height=768) == 2


async def test_images_in(client: httpx.AsyncClient, receiver: Receiver) -> None:
    async def error_for(**overrides: Any) -> str:
        response = await client.post(SUBMIT["headshot"], json=request_body("headshot", **overrides))
        assert response.status_code == 400, response.text
        return response.json()["message"]

    assert "face_image" in await error_for(face_image=data_uri(b"plain text, not a picture"))
    assert "face_image" in await error_for(face_image="data:image/jpeg;base64,@@@")
    assert "base64" in await error_for(base64=False)
    assert "face_image" in await error_for(face_image="https://example.com/selfie.jpg")
    assert "face_image" in await error_for(face_image=f"{receiver.url}/text.jpg")
    assert "face_image" in await error_for(face_image=f"{receiver.url}/missing.jpg")
    bad_pose = request_body("avatar", pose_image=data_uri(b"nope"))
    refused = await client.post(SUBMIT["avatar"], json=bad_pose)
    assert "pose_image" in refused.json()["message"]

    by_url = request_body("headshot", face_image=f"{receiver.url}/selfie.jpg", base64=False)
    answer = (await client.post(SUBMIT["headshot"], json=by_url)).json()
    assert answer["status"] == "success"
    assert answer["output"][0].endswith("/0.jpg")
    assert answer["meta"]["face_image"] == by_url["face_image"]
    image = Image.open(io.BytesIO((await client.get(answer["output"][0])).content))
    assert image.size == (384, 512)
    assert (await client.get(answer["output"][0].replace(".jpg", ".base64"))).status_code == 404


# -- output images ---------------------------------------------------------------------------


def colour_distance(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) ** 0.5


async def test_outputs_show_the_selfie_face(
    config: SimulatorConfig, client: httpx.AsyncClient
) -> None:
    config.output_format = "png"
    body = request_body("facegen", seed=5)
    answer = (await client.post(SUBMIT["facegen"], json=body)).json()
    image = decode_output(await client.get(answer["output"][0])).convert("RGB")
    assert image.format is None or image.size == (512, 768)
    # The face is left of centre in the selfie; the output centres it in the upper half.
    face_region = image.crop((216, 220, 296, 320))
    face_mean = tuple(ImageStat.Stat(face_region).mean)
    assert colour_distance(face_mean, SKIN) < 25, face_mean

    again = (await client.post(SUBMIT["facegen"], json=body)).json()
    other_seed = (await client.post(SUBMIT["facegen"], json={**body, "seed": 6})).json()
    first = (await client.get(answer["output"][0])).content
    assert (await client.get(again["output"][0])).content == first  # deterministic
    assert (await client.get(other_seed["output"][0])).content != first


def test_face_finder_and_fallback() -> None:
    face = simulated_images.prepare_face(selfie_bytes())
    assert face.found
    left, top, right, bottom = face.box
    assert 30 <= left <= 50 and 160 <= top <= 180 and 170 <= right <= 190 and bottom <= 370

    buffer = io.BytesIO()
    Image.new("RGB", (300, 400), (20, 200, 30)).save(buffer, "PNG")
    plain = simulated_images.prepare_face(buffer.getvalue())
    assert not plain.found
    left, top, right, bottom = plain.box
    assert left < 150 < right and top < 0.38 * 400 < bottom
    with pytest.raises(simulated_images.NotAnImage):
        simulated_images.prepare_face(b"GIF89a but not really")


ASTRONAUT = Path(__file__).resolve().parent.parent / "examples" / "astronaut.jpg"
# The astronaut's cheeks, nose and mouth in the 384x384 selfie (found by eye).
ASTRONAUT_FACE = (145, 75, 195, 125)


def test_face_finder_skips_the_orange_suit() -> None:
    """The skin test rejects the saturated orange space suit and the blond hair."""
    face = simulated_images.prepare_face(ASTRONAUT.read_bytes())
    assert face.found
    width, height = face.image.size
    left, top, right, bottom = face.box
    assert abs((left + right) / 2 / width - 0.44) < 0.04, face.box
    assert abs((top + bottom) / 2 / height - 0.25) < 0.05, face.box
    assert 0.15 <= (bottom - top) / height <= 0.3, face.box
    assert 0.12 <= (right - left) / width <= 0.28, face.box


def warm_fraction(image: Image.Image) -> float:
    """The share of pixels clearly redder than blue: skin, blond hair, not a blue backdrop."""
    red, _, blue = image.split()
    warm = ImageChops.subtract(red, blue).point([255 if v > 20 else 0 for v in range(256)])
    return ImageStat.Stat(warm).mean[0] / 255


@pytest.mark.parametrize("size", [(384, 384), (512, 768), (1024, 1024)])
def test_astronaut_comes_back_as_a_headshot(size: tuple[int, int]) -> None:
    """The face fills the upper middle of the frame, not a shrunken whole photo."""
    selfie = ASTRONAUT.read_bytes()
    face_colour = tuple(
        ImageStat.Stat(Image.open(ASTRONAUT).convert("RGB").crop(ASTRONAUT_FACE)).mean
    )
    width, height = size
    for seed in (0, 7):
        (data,) = simulated_images.make_images(
            selfie,
            operation="headshot",
            width=width,
            height=height,
            seed=seed,
            count=1,
            image_format="png",
        )
        image = Image.open(io.BytesIO(data)).convert("RGB")
        assert image.size == size
        # Eyes near the upper third: a box 20 % of each side just above the centre is face.
        centre = image.crop((0.4 * width, 0.3 * height, 0.6 * width, 0.5 * height))
        centre_mean = tuple(ImageStat.Stat(centre).mean)
        assert colour_distance(centre_mean, face_colour) < 25, (seed, centre_mean)
        # Head and hair (warm) fill the upper middle; the (blue) backdrop shows little there.
        upper_middle = image.crop((0.3 * width, 0.1 * height, 0.7 * width, 0.55 * height))
        assert warm_fraction(upper_middle) > 0.7, seed


def test_framing_fills_the_frame_and_fades_off_the_selfie_edge() -> None:
    """Where the crop runs past the selfie the backdrop shows, softly: no hard seam."""
    face = simulated_images.prepare_face(selfie_bytes())  # a big face low in the picture
    image = simulated_images.render(face, operation="headshot", width=512, height=768, seed=5)
    # The face is centred in the upper half, at least ~35 % of the height.
    column = [image.getpixel((256, y)) for y in range(768)]
    skin_rows = [y for y, pixel in enumerate(column) if colour_distance(pixel, SKIN) < 30]
    assert skin_rows and (skin_rows[-1] - skin_rows[0]) / 768 > 0.33
    assert 0.25 < (skin_rows[0] + skin_rows[-1]) / 2 / 768 < 0.5
    # The selfie ends ~80 % down the frame: the change to the backdrop is gradual.
    steps = [colour_distance(column[y], column[y + 1]) for y in range(500, 767)]
    assert max(steps) < 12, max(steps)


def make_selfie(draw_scene: Callable[[ImageDraw.ImageDraw], None], background: Any) -> bytes:
    image = Image.new("RGB", (480, 640), background)
    draw_scene(ImageDraw.Draw(image))
    buffer = io.BytesIO()
    image.filter(ImageFilter.GaussianBlur(2)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def beige_wall(draw: ImageDraw.ImageDraw) -> None:
    """A face that touches a skin-coloured wall (they form one area at loose thresholds)."""
    draw.rounded_rectangle((60, 430, 420, 700), 80, fill=(30, 30, 50))
    draw.rectangle((205, 380, 275, 440), fill=(200, 150, 120))
    draw.ellipse((165, 120, 315, 330), fill=(60, 40, 30))
    draw.ellipse((180, 170, 300, 400), fill=(200, 150, 120))


def bare_shoulders(draw: ImageDraw.ImageDraw) -> None:
    """Darker skin, with the neck and bare shoulders joined to the face."""
    skin = (140, 95, 70)
    draw.rounded_rectangle((20, 470, 460, 700), 120, fill=skin)
    draw.rectangle((200, 380, 280, 500), fill=skin)
    draw.ellipse((170, 130, 310, 320), fill=(20, 15, 15))
    draw.ellipse((180, 170, 300, 400), fill=skin)


@pytest.mark.parametrize(
    ("scene", "background"),
    [(beige_wall, (210, 190, 170)), (bare_shoulders, (120, 125, 130))],
)
def test_face_finder_scenes(
    scene: Callable[[ImageDraw.ImageDraw], None], background: tuple[int, int, int]
) -> None:
    face = simulated_images.prepare_face(make_selfie(scene, background))
    assert face.found
    left, top, right, bottom = face.box
    # The face ellipse is (180, 170)-(300, 400); its skin below the hair starts at ~170.
    assert 165 <= left <= 195 and 285 <= right <= 315, face.box
    assert 150 <= top <= 200 and 300 <= bottom <= 410, face.box


async def test_base64_prefix_option(config: SimulatorConfig, client: httpx.AsyncClient) -> None:
    config.base64_data_uri_prefix = True
    answer = (await client.post(SUBMIT["headshot"], json=request_body("headshot"))).json()
    response = await client.get(answer["output"][0])
    assert response.text.startswith("data:image/jpeg;base64,")
    assert decode_output(response).size == (384, 512)


async def test_links_expire(
    config: SimulatorConfig, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    config.link_ttl_seconds = 100.0
    answer = (await client.post(SUBMIT["headshot"], json=request_body("headshot"))).json()
    link = answer["output"][0]
    clock.advance(99)
    assert (await client.get(link)).status_code == 200
    clock.advance(1)
    assert (await client.get(link)).status_code == 404
    assert (await client.get(answer["proxy_links"][0])).status_code == 404


async def test_pending_links_as_html(config: SimulatorConfig, client: httpx.AsyncClient) -> None:
    config.processing_seconds = 10.0
    config.pending_links = "html"
    answer = (await client.post(SUBMIT["headshot"], json=request_body("headshot"))).json()
    response = await client.get(answer["future_links"][0])
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")


# -- queue cap, faults, variants ---------------------------------------------------------------


async def test_queue_cap_per_key(
    sim: Simulator, config: SimulatorConfig, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    config.processing_seconds = 60.0
    config.max_queued = 2
    config.retry_after = 17
    first = (await client.post(SUBMIT["headshot"], json=request_body("headshot"))).json()
    await client.post(SUBMIT["facegen"], json=request_body("facegen"))
    assert sim.queued_count(KEY) == 2

    refused = await client.post(SUBMIT["avatar"], json=request_body("avatar"))
    assert refused.status_code == 429
    assert refused.json() == {
        "status": "error",
        "message": "Rate limit exceeded. Maximum 2 queued requests allowed.",
        "retry_after": 17,
    }
    other = await client.post(SUBMIT["avatar"], json=request_body("avatar", key="another-key"))
    assert other.json()["status"] == "processing"

    sim.complete_now(str(first["id"]))
    assert sim.queued_count(KEY) == 1
    assert (await client.post(SUBMIT["avatar"], json=request_body("avatar"))).status_code == 200
    assert (await client.post(SUBMIT["avatar"], json=request_body("avatar"))).status_code == 429
    clock.advance(60)
    assert sim.queued_count(KEY) == 0
    assert (await client.post(SUBMIT["avatar"], json=request_body("avatar"))).status_code == 200


async def test_injected_faults(
    sim: Simulator, config: SimulatorConfig, client: httpx.AsyncClient
) -> None:
    config.inject = [503, 500, 429, 402]
    statuses = []
    for _ in range(5):
        response = await client.post(SUBMIT["headshot"], json=request_body("headshot"))
        statuses.append(response.status_code)
        assert response.json()["status"] == ("success" if response.status_code == 200 else "error")
        if response.status_code == 429:
            assert response.json()["retry_after"] == 30
    assert statuses == [503, 500, 429, 402, 200]
    assert [status for path, status in sim.requests if path == SUBMIT["headshot"]] == statuses
    assert config.inject == []


async def test_delay_makes_a_client_time_out(
    config: SimulatorConfig, client: httpx.AsyncClient
) -> None:
    config.delay_seconds = 0.5
    with pytest.raises(httpx.ReadTimeout):
        await client.post(f"{FETCH['headshot']}/1", json={"key": KEY}, timeout=0.1)


async def test_numbers_as_strings_and_messege(
    config: SimulatorConfig, clock: FakeClock, client: httpx.AsyncClient
) -> None:
    config.numbers_as_strings = True
    config.message_field = "messege"
    config.processing_seconds = 146.52
    answer = (await client.post(SUBMIT["facegen"], json=request_body("facegen"))).json()
    assert answer["status"] == "processing"
    assert isinstance(answer["id"], str) and answer["eta"] == "146.52"
    assert answer["meta"]["width"] == "512" and answer["meta"]["seed"] == "11"
    assert "messege" in answer and "message" not in answer

    pending = (await client.post(answer["fetch_result"], json={"key": KEY})).json()
    assert pending["output"] == "" and "messege" in pending
    clock.advance(200)
    done = (await client.post(answer["fetch_result"], json={"key": KEY})).json()
    assert isinstance(done["generationTime"], str) and done["output"]

    error = await client.post(SUBMIT["facegen"], json=request_body("facegen", width=4000))
    assert "width" in error.json()["messege"]


# -- webhooks --------------------------------------------------------------------------------


async def test_webhooks_with_duplicates_out_of_order(
    sim: Simulator,
    config: SimulatorConfig,
    clock: FakeClock,
    client: httpx.AsyncClient,
    receiver: Receiver,
) -> None:
    config.processing_seconds = 20.0
    config.webhook_duplicates = 2
    config.webhook_jitter_seconds = 0.05
    hook = f"{receiver.url}/hook/secret-token"
    ids = []
    for track in ("job-a", "job-b"):
        body = request_body("headshot", webhook=hook, track_id=track)
        ids.append((await client.post(SUBMIT["headshot"], json=body)).json()["id"])
    await asyncio.sleep(0.05)
    assert receiver.posts == []  # nothing until the jobs end

    clock.advance(20)
    await wait_for(lambda: len(receiver.posts) == 6)
    assert sorted(post["track_id"] for post in receiver.posts) == ["job-a"] * 3 + ["job-b"] * 3
    for post in receiver.posts:
        assert post["status"] == "success"
        assert post["id"] in ids
        assert post["output"] and post["meta"]["webhook"] == hook
        assert isinstance(post["generationTime"], float)
    await wait_for(lambda: len(sim.webhook_deliveries) == 6)
    assert {delivery["status"] for delivery in sim.webhook_deliveries} == {200}


async def test_failed_webhook_and_unreachable_receiver(
    sim: Simulator, config: SimulatorConfig, client: httpx.AsyncClient, receiver: Receiver
) -> None:
    config.failure_rate = 1.0
    config.failed_webhook_id = "str"
    body = request_body("flux_headshot", webhook=f"{receiver.url}/hook/t", track_id=99)
    answer = (await client.post(SUBMIT["flux_headshot"], json=body)).json()
    await wait_for(lambda: len(receiver.posts) == 1)
    post = receiver.posts[0]
    assert post == {
        "status": "failed",
        "id": str(answer["id"]),
        "message": post["message"],
        "track_id": 99,
    }

    config.failure_rate = 0.0
    dead = request_body("headshot", webhook="http://127.0.0.1:9/hook/x", track_id="t")
    assert (await client.post(SUBMIT["headshot"], json=dead)).json()["status"] == "success"
    await wait_for(lambda: len(sim.webhook_deliveries) == 2)
    assert sim.webhook_deliveries[1]["error"] and sim.webhook_deliveries[1]["status"] is None


# -- stranger mode ---------------------------------------------------------------------------

STRANGER_SKIN = (170, 120, 90)
# Where the face sits in a 512x768 output (see test_outputs_show_the_selfie_face).
OUTPUT_FACE = (216, 220, 296, 320)


@cache
def stranger_bytes() -> bytes:
    """Another person: a darker face, centred, in a green room."""
    image = Image.new("RGB", (384, 512), (70, 110, 70))
    ImageDraw.Draw(image).ellipse((130, 120, 250, 290), fill=STRANGER_SKIN)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def face_colour(data: bytes) -> tuple[float, ...]:
    image = Image.open(io.BytesIO(data)).convert("RGB")
    assert image.size == (512, 768)
    return tuple(ImageStat.Stat(image.crop(OUTPUT_FACE)).mean)


def shows(data: bytes) -> str:
    """Whose face an output shows: the selfie's or the stranger's (and clearly so)."""
    colour = face_colour(data)
    if colour_distance(colour, SKIN) < 25:
        return "selfie"
    assert colour_distance(colour, STRANGER_SKIN) < 25, colour
    return "stranger"


async def make_outputs(client: httpx.AsyncClient, **overrides: Any) -> tuple[str, list[bytes]]:
    answer = (
        await client.post(SUBMIT["facegen"], json=request_body("facegen", **overrides))
    ).json()
    assert answer["status"] == "success", answer
    images = [(await client.get(link)).content for link in answer["proxy_links"]]
    return str(answer["id"]), images


def test_strangers_are_spread_evenly() -> None:
    def strangers(rate: float, outputs: int = 20) -> list[int]:
        return [n for n in range(outputs) if is_stranger(n, rate)]

    assert strangers(0.5) == [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]
    assert strangers(1.0) == list(range(20))
    assert strangers(0.0) == []
    assert strangers(0.25) == [3, 7, 11, 15, 19]
    assert strangers(0.1, 40) == [9, 19, 29, 39]  # exact: 0.1 is not one off in binary
    assert len(strangers(0.3, 1000)) == 300
    assert strangers(0.3) == [3, 6, 9, 13, 16, 19]


async def test_rate_half_makes_every_second_output_a_stranger(
    sim: Simulator, config: SimulatorConfig, client: httpx.AsyncClient
) -> None:
    config.output_format = "png"
    config.stranger_image = stranger_bytes()
    config.stranger_rate = 0.5
    made = [await make_outputs(client, seed=5) for _ in range(4)]
    assert [sim.jobs[job].strangers for job, _ in made] == [(), (0,), (), (0,)]
    assert [shows(image) for _, (image,) in made] == ["selfie", "stranger"] * 2
    # Same seed, same slot: each face's outputs are the same picture, the two faces' are not.
    selfie_output, stranger_output = made[0][1][0], made[1][1][0]
    assert made[2][1][0] == selfie_output and made[3][1][0] == stranger_output
    assert stranger_output != selfie_output

    # Numbered across jobs and slots, in the order they are made; a failed job makes none.
    config.failure_rate = 1.0
    failed = (await client.post(SUBMIT["facegen"], json=request_body("facegen"))).json()
    assert failed["status"] == "failed" and sim.jobs[str(failed["id"])].strangers == ()
    config.failure_rate = 0.0
    two, three = await make_outputs(client, samples=2), await make_outputs(client, samples=2)
    assert sim.jobs[two[0]].strangers == (1,)  # outputs 4 and 5
    assert sim.jobs[three[0]].strangers == (1,)  # outputs 6 and 7
    assert [shows(image) for image in two[1] + three[1]] == ["selfie", "stranger"] * 2


async def test_rate_one_makes_every_output_a_stranger_as_its_own_selfie_would(
    sim: Simulator, config: SimulatorConfig, client: httpx.AsyncClient
) -> None:
    config.output_format = "png"
    config.stranger_image = stranger_bytes()
    config.stranger_rate = 1.0
    job, images = await make_outputs(client, seed=9, samples=2)
    assert sim.jobs[job].strangers == (0, 1)
    assert [shows(image) for image in images] == ["stranger", "stranger"]
    assert images[0] != images[1]  # each slot its own framing and backdrop, as for the selfie

    # Rendered as the stranger's own request would be (no cache mixes the two faces up).
    config.stranger_rate = 0.0
    as_selfie = request_body("facegen", seed=9, samples=2, face_image=data_uri(stranger_bytes()))
    answer = (await client.post(SUBMIT["facegen"], json=as_selfie)).json()
    own = [(await client.get(link)).content for link in answer["proxy_links"]]
    assert own == images
    _, mine = await make_outputs(client, seed=9, samples=2)
    assert [shows(image) for image in mine] == ["selfie", "selfie"]


async def test_concurrent_jobs_share_out_the_strangers(
    sim: Simulator, config: SimulatorConfig, client: httpx.AsyncClient
) -> None:
    """Each output gets its own number however the jobs interleave: exactly every second
    one of the eight shows the stranger."""
    config.max_queued = 10
    config.stranger_image = stranger_bytes()
    config.stranger_rate = 0.5
    made = await asyncio.gather(*(make_outputs(client) for _ in range(8)))
    assert sorted(len(sim.jobs[job].strangers) for job, _ in made) == [0] * 4 + [1] * 4


def test_stranger_settings_are_checked(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(StrangerError, match=r"^the stranger rate is 0.5 but no stranger image"):
        Simulator(SimulatorConfig(stranger_rate=0.5))
    for rate in (1.5, -0.1, float("nan")):
        with pytest.raises(StrangerError, match=r"^the stranger rate must be a number from 0 to 1"):
            Simulator(SimulatorConfig(stranger_image=stranger_bytes(), stranger_rate=rate))
    with pytest.raises(StrangerError, match=r"^the stranger image is not a usable image: "):
        Simulator(SimulatorConfig(stranger_image=b"GIF89a but not really", stranger_rate=0.5))
    Simulator(SimulatorConfig(stranger_image=stranger_bytes()))  # rate 0: no strangers, fine


async def test_a_stranger_setting_spoilt_while_running_is_an_error_answer(
    config: SimulatorConfig, client: httpx.AsyncClient
) -> None:
    config.stranger_rate = 0.5
    answer = await client.post(SUBMIT["facegen"], json=request_body("facegen"))
    assert answer.status_code == 500
    assert answer.json()["message"].startswith("simulator: the stranger rate is 0.5 but no")


@pytest.mark.parametrize(
    ("image", "rate", "expected"),
    [
        ("missing.png", "0.5", "headshot-bot: no such stranger image file: "),
        ("notes.txt", "0.5", "headshot-bot: the stranger image is not a usable image: "),
        (None, "0.5", "headshot-bot: the stranger rate is 0.5 but no stranger image was given"),
        ("stranger.png", "1.5", "headshot-bot simulate: argument --stranger-rate: must be a "),
        ("stranger.png", "nan", "headshot-bot simulate: argument --stranger-rate: must be a "),
    ],
)
def test_the_cli_refuses_a_bad_stranger_in_one_line(
    image: str | None,
    rate: str,
    expected: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "notes.txt").write_text("not a picture")
    (tmp_path / "stranger.png").write_bytes(stranger_bytes())
    argv = ["simulate", "--port", "0", "--stranger-rate", rate]
    if image is not None:
        argv += ["--stranger-image", str(tmp_path / image)]
    try:
        code = main(argv)
    except SystemExit as stopped:
        code = stopped.code
    assert code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(expected), line


# -- serve -----------------------------------------------------------------------------------


async def test_serve_runs_until_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="backends.modelslab.simulator")
    task = asyncio.create_task(serve("127.0.0.1", 0, SimulatorConfig()))
    await wait_for(lambda: "listening on" in caplog.text)
    match = re.search(r"listening on (http://\S+)", caplog.text)
    assert match is not None
    async with httpx.AsyncClient(trust_env=False) as client:
        response = await client.post(f"{match.group(1)}{FETCH['headshot']}/1", json={"key": KEY})
    assert response.status_code == 404
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
