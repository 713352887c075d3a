"""ModelsLab wire format: request bodies, every documented answer shape, and the limits that are
refused before any network call."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backends.base import ProviderResult, ResultStatus, SubmitRequest
from backends.errors import InvalidRequest, OutputUnavailable, ProviderUnavailable
from backends.modelslab import ModelsLabClient, wire
from backends.modelslab.retry import RetryPolicy
from backends.params import GenerationParams, Operation

KEY = "sk-test-wire-0123456789abcdef"
FACE = b"\xff\xd8\xff\xe0 not really a jpeg"
FACE_URI = "data:image/jpeg;base64," + base64.b64encode(FACE).decode()


def _request(operation: str, **options: Any) -> SubmitRequest:
    return SubmitRequest(
        params=GenerationParams.create(operation, prompt="a headshot", **options), face_image=FACE
    )


# --- request bodies -------------------------------------------------------------------------


def test_endpoints_match_the_contract() -> None:
    assert {op: (e.submit_path, e.image_field) for op, e in wire.ENDPOINTS.items()} == {
        Operation.HEADSHOT: ("/api/v6/image_editing/head_shot", "face_image"),
        Operation.AVATAR: ("/api/v6/image_editing/avatar_gen", "init_image"),
        Operation.FACEGEN: ("/api/v1/enterprise/face_gen/make_gen", "face_image"),
        Operation.FLUX_HEADSHOT: ("/api/v1/enterprise/flux_headshot/make_gen", "face_image"),
    }
    fetch = {op: e.fetch_path("42") for op, e in wire.ENDPOINTS.items()}
    assert fetch == {
        Operation.HEADSHOT: "/api/v6/image_editing/fetch/42",
        Operation.AVATAR: "/api/v6/image_editing/fetch/42",
        Operation.FACEGEN: "/api/v1/enterprise/face_gen/fetch/42",
        Operation.FLUX_HEADSHOT: "/api/v1/enterprise/flux_headshot/fetch/42",
    }


def test_fetch_path_escapes_the_id() -> None:
    path = wire.ENDPOINTS[Operation.HEADSHOT].fetch_path("../../x?y")
    assert path == "/api/v6/image_editing/fetch/..%2F..%2Fx%3Fy"


def test_headshot_body() -> None:
    request = SubmitRequest(
        params=GenerationParams.create(
            "headshot", prompt="a headshot", negative_prompt="blurry", safety_checker_type="blur"
        ),
        face_image=FACE,
        webhook_url="https://bot.example/webhooks/modelslab/t",
        track_id="job-1",
    )
    body = wire.build_submit_body(request, key=KEY)
    assert body == {
        "key": KEY,
        "prompt": "a headshot",
        "negative_prompt": "blurry",
        "face_image": FACE_URI,
        "samples": 1,
        "num_inference_steps": 21,
        "guidance_scale": 5.0,
        "safety_checker": True,
        "s_scale": 1.0,
        "safety_checker_type": "blur",
        "seed": None,
        "base64": True,
        "webhook": "https://bot.example/webhooks/modelslab/t",
        "track_id": "job-1",
    }
    assert "width" not in body and "height" not in body  # omitted: the face image's size
    json.dumps(body)


def test_avatar_body_uses_init_image_and_avatar_fields() -> None:
    request = SubmitRequest(
        params=GenerationParams.create(
            "avatar", prompt="an avatar", seed=7, controlnet_selection=["pose", "canny"]
        ),
        face_image=FACE,
        pose_image=b"pose-bytes",
        pose_image_type="image/png",
    )
    body = wire.build_submit_body(request, key=KEY)
    assert body["init_image"] == FACE_URI
    assert "face_image" not in body
    assert body["pose_image"] == "data:image/png;base64," + base64.b64encode(b"pose-bytes").decode()
    assert body["controlnet_selection"] == "pose,canny"
    assert body["identitynet_strength_ratio"] == 0.8
    assert body["adapter_strength_ratio"] == 1.0
    assert body["pose_strength"] == 0.4
    assert body["canny_strength"] == 0.3
    assert (body["width"], body["height"], body["seed"], body["base64"]) == (512, 768, 7, True)
    assert body["webhook"] is None and body["track_id"] is None


def test_facegen_body_has_its_required_fields() -> None:
    body = wire.build_submit_body(_request("facegen", seed=99), key=KEY)
    for field in ("key", "prompt", "face_image", "safety_checker", "s_scale", "seed"):
        assert body[field] is not None, field
    assert body["seed"] == 99
    assert body["safety_checker_type"] == "sensitive_content_text"


def test_flux_body_has_no_sd_only_fields() -> None:
    body = wire.build_submit_body(_request("flux_headshot", seed=5), key=KEY)
    assert body["seed"] == 5
    assert (body["width"], body["height"], body["num_inference_steps"]) == (1024, 1024, 21)
    assert body["guidance_scale"] == 3.5
    for absent in ("s_scale", "safety_checker_type", "pose_strength", "controlnet_selection"):
        assert absent not in body


@pytest.mark.parametrize("operation", ["facegen", "flux_headshot"])
def test_seed_required_operations_refuse_a_missing_seed(operation: str) -> None:
    with pytest.raises(InvalidRequest, match="seed is required"):
        wire.build_submit_body(_request(operation), key=KEY)


@pytest.mark.parametrize(
    ("data", "mime", "needle"),
    [(b"", "image/jpeg", "empty"), (b"x", "text/html", "MIME"), (b"x", "image/j peg", "MIME")],
)
def test_data_uri_refuses_bad_images(data: bytes, mime: str, needle: str) -> None:
    with pytest.raises(InvalidRequest, match=needle):
        wire.data_uri(data, mime, "face_image")


# --- answers --------------------------------------------------------------------------------


def test_success() -> None:
    body = {
        "status": "success",
        "generationTime": 2.17,
        "id": 79872368,
        "output": ["https://cdn.example/a.png", "https://cdn.example/b.png"],
        "proxy_links": ["https://proxy.example/a.png"],
        "nsfw_content_detected": False,
        "meta": {"prompt": "x", "seed": 1234, "width": 512},
    }
    assert wire.parse_result(body) == ProviderResult(
        status=ResultStatus.SUCCESS,
        provider_id="79872368",
        outputs=("https://cdn.example/a.png", "https://cdn.example/b.png"),
        generation_time=2.17,
        seed=1234,
    )


def test_success_with_numbers_as_strings_and_proxy_links_only() -> None:
    body = {
        "status": "success",
        "generationTime": "3.5",
        "id": "abc-1",
        "output": [],
        "proxy_links": ["https://proxy.example/a.png"],
        "meta": {"seed": "42"},
    }
    result = wire.parse_result(body)
    assert result.outputs == ("https://proxy.example/a.png",)
    assert (result.provider_id, result.generation_time, result.seed) == ("abc-1", 3.5, 42)


def test_success_without_meta_or_time() -> None:
    result = wire.parse_result({"status": "success", "id": 1, "output": "https://cdn.example/a"})
    assert result.outputs == ("https://cdn.example/a",)
    assert result.seed is None and result.generation_time is None


@pytest.mark.parametrize("eta", [146.52, "146.52", 146, "146"])
@pytest.mark.parametrize("field", ["message", "messege"])
def test_processing(eta: object, field: str) -> None:
    body = {
        "status": "processing",
        "id": "9",
        "eta": eta,
        "fetch_result": "https://modelslab.com/api/v6/image_editing/fetch/9",
        "future_links": ["https://cdn.example/9-0.png"],
        "output": [],
        field: "Try to fetch request after given estimated time",
        "tip": "you can use webhooks",
        "meta": {"seed": 77},
    }
    result = wire.parse_result(body)
    assert result.status is ResultStatus.PROCESSING
    assert result.provider_id == "9"
    assert result.eta_seconds == pytest.approx(float(eta))
    assert result.outputs == ()  # future links are not outputs yet
    assert result.message == "Try to fetch request after given estimated time"
    assert result.seed == 77


def test_fetch_processing_with_output_as_empty_string() -> None:
    result = wire.parse_result({"status": "processing", "id": 3, "output": ""})
    assert result == ProviderResult(status=ResultStatus.PROCESSING, provider_id="3", message="")


@pytest.mark.parametrize("status", ["error", "failed", "Error", " FAILED "])
@pytest.mark.parametrize("field", ["message", "messege"])
def test_error_and_failed(status: str, field: str) -> None:
    result = wire.parse_result({"status": status, field: "Something went wrong", "id": "5"})
    assert result == ProviderResult(
        status=ResultStatus.FAILED, provider_id="5", message="Something went wrong"
    )


def test_failed_without_message_says_so() -> None:
    assert wire.parse_result({"status": "failed"}).message == "the generation failed"


def test_validation_message_as_an_object_is_flattened() -> None:
    body = {"status": "error", "message": {"prompt": ["The prompt field is required."]}}
    assert wire.message_of(body) == "prompt: The prompt field is required."


@pytest.mark.parametrize("body", [{}, {"status": "queued?"}, {"status": 3}, {"output": []}])
def test_unknown_status_is_provider_unavailable(body: dict[str, Any]) -> None:
    assert not wire.is_known(body)
    with pytest.raises(ProviderUnavailable):
        wire.parse_result(body)


@pytest.mark.parametrize(
    "content",
    [
        b"<html><body>502 Bad Gateway</body></html>",
        b"",
        b"{not json",
        b"[1, 2]",
        b'"success"',
        b"null",
        b"\xff\xfe\x00garbage",
        b"[" * 100_000,
    ],
)
def test_garbled_bodies(content: bytes) -> None:
    assert wire.json_object(content) is None
    with pytest.raises(ProviderUnavailable) as caught:
        wire.decode_object(content)
    assert caught.value.retryable
    assert caught.value.__context__ is None


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"status": "error", "message": "Invalid API key"}, wire.ErrorKind.AUTH),
        ({"status": "error", "messege": "invalid api key provided"}, wire.ErrorKind.AUTH),
        (
            {"status": "error", "message": "Rate limit exceeded. Maximum 5 queued requests."},
            wire.ErrorKind.RATE_LIMIT,
        ),
        (
            {"status": "error", "message": "slow down", "retry_after": "30"},
            wire.ErrorKind.RATE_LIMIT,
        ),
        ({"status": "error", "message": "Insufficient credits"}, wire.ErrorKind.CREDITS),
        ({"status": "error", "message": "Your plan does not allow this"}, wire.ErrorKind.PLAN),
        ({"status": "error", "message": "Request not found"}, wire.ErrorKind.UNKNOWN_JOB),
        ({"status": "error", "message": "prompt is required"}, wire.ErrorKind.INVALID),
        ({"status": "error"}, wire.ErrorKind.INVALID),
    ],
)
def test_classify_error(body: dict[str, Any], kind: wire.ErrorKind) -> None:
    assert wire.classify_error(body) is kind


def test_messages_are_sanitised() -> None:
    body = {"status": "error", "message": f"bad key {KEY}\n\tfor  you " + "x" * 500}
    message = wire.message_of(body, secrets=[KEY])
    assert KEY not in message
    assert message.startswith("bad key [redacted] for you x")
    assert len(message) <= wire.MAX_MESSAGE_CHARS
    result = wire.parse_result(body, secrets=[KEY])
    assert result.message == message


def test_retry_after_from_body_then_header() -> None:
    assert wire.retry_after({"retry_after": 30}, "5") == 30.0
    assert wire.retry_after({"retry_after": "12.5"}, None) == 12.5
    assert wire.retry_after({}, "5") == 5.0
    assert wire.retry_after(None, None) is None
    assert wire.retry_after({"retry_after": "soon"}, "Wed, 21 Oct 2015 07:28:00 GMT") is None


# --- values ---------------------------------------------------------------------------------

finite = st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False)


@given(finite)
def test_numbers_as_numbers_or_strings(value: float) -> None:
    assert wire.parse_number(value) == value
    assert wire.parse_number(repr(value)) == value
    assert wire.parse_number(f" {value} ") == value


@given(st.integers(min_value=0, max_value=2**64))
def test_integers_as_numbers_or_strings(value: int) -> None:
    assert wire.parse_int(value) == value
    assert wire.parse_int(str(value)) == value
    assert wire.parse_int([value]) == value
    assert wire.parse_seed({"seed": str(value)}) == value


@pytest.mark.parametrize(
    "value", [None, True, "", "abc", -1, "-3", float("nan"), float("inf"), [], {}, "inf"]
)
def test_numbers_that_are_not(value: object) -> None:
    assert wire.parse_number(value) is None
    assert wire.parse_int(value) is None


@given(st.integers(min_value=0, max_value=2**63))
def test_ids_as_integers_or_strings(value: int) -> None:
    assert wire.parse_id(value) == str(value)
    assert wire.parse_id(str(value)) == str(value)
    result = wire.parse_result({"status": "processing", "id": value, "eta": str(value)})
    assert result.provider_id == str(value)


_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
_json_values = (
    _scalars
    | st.sampled_from(["success", "processing", "error", "failed"])
    | st.lists(_scalars, max_size=3)
    | st.dictionaries(st.sampled_from(["seed", "prompt"]), _scalars, max_size=2)
)


@given(
    st.dictionaries(
        st.sampled_from(
            ["status", "id", "output", "eta", "meta", "message", "messege", "future_links"]
        ),
        _json_values,
    )
)
def test_any_json_object_parses_or_is_provider_unavailable(body: dict[str, Any]) -> None:
    try:
        result = wire.parse_result(body)
    except ProviderUnavailable:
        return
    assert isinstance(result, ProviderResult)
    assert result.provider_id is None or isinstance(result.provider_id, str)
    assert all(isinstance(url, str) for url in result.outputs)


@pytest.mark.parametrize("value", [None, 3, {"a": 1}, [None, 4, "ftp://x", "  "]])
def test_urls_that_are_not(value: object) -> None:
    assert wire.parse_urls(value) == ()


# --- .base64 outputs ------------------------------------------------------------------------

IMAGE = bytes(range(256)) * 3


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(IMAGE),
        b"data:image/png;base64," + base64.b64encode(IMAGE),
        base64.encodebytes(IMAGE),  # with line breaks
        base64.b64encode(IMAGE).rstrip(b"="),  # padding dropped
        b"  data:image/jpeg;base64," + base64.b64encode(IMAGE) + b"\n",
    ],
)
def test_base64_outputs_decode(text: bytes) -> None:
    assert wire.decode_base64_output(text) == IMAGE


@pytest.mark.parametrize("text", [b"", b"%%%not base64%%%", b"<html>not ready</html>", b"data:,"])
def test_invalid_base64_outputs(text: bytes) -> None:
    with pytest.raises(OutputUnavailable):
        wire.decode_base64_output(text)


# --- retry policy ---------------------------------------------------------------------------


def test_backoff_is_full_jitter_and_bounded() -> None:
    policy = RetryPolicy(max_attempts=4, base=0.5, cap=20.0)
    rng = random.Random(1)
    for attempt in range(200):
        wait = policy.backoff(attempt, rng)
        assert 0 <= wait <= min(20.0, 0.5 * 2**attempt)


def test_rate_limit_wait_honours_retry_after() -> None:
    policy = RetryPolicy(base=0.5, cap=20.0, max_retry_after=60.0)
    rng = random.Random(2)
    for _ in range(50):
        assert 30.0 <= policy.rate_limit_wait(0, 30.0, rng) <= 30.5  # type: ignore[operator]
    assert policy.rate_limit_wait(0, 61.0, rng) is None
    assert 0 <= policy.rate_limit_wait(1, None, rng) <= 1.0  # type: ignore[operator]


@pytest.mark.parametrize("kwargs", [{"max_attempts": 0}, {"base": -1.0}, {"cap": float("nan")}])
def test_retry_policy_refuses_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


# --- limits, refused before the network -----------------------------------------------------


BAD_PARAMS: list[tuple[Operation, dict[str, Any], str, str]] = []
for _op in (Operation.HEADSHOT, Operation.FACEGEN):
    BAD_PARAMS += [
        (_op, {"width": 513}, "width", "64 to 512"),
        (_op, {"height": 769}, "height", "64 to 768"),
        (_op, {"num_inference_steps": 20}, "num_inference_steps", "21, 31 or 41"),
        (_op, {"num_inference_steps": 30}, "num_inference_steps", "21, 31 or 41"),
        (_op, {"samples": 3}, "samples", "1 to 2"),
        (_op, {"samples": 0}, "samples", "1 to 2"),
        (_op, {"guidance_scale": 0.5}, "guidance_scale", "1.0 to 7.5"),
        (_op, {"guidance_scale": 8.0}, "guidance_scale", "1.0 to 7.5"),
        (_op, {"s_scale": 2.5}, "s_scale", "0.0 to 2.0"),
        (_op, {"s_scale": -0.1}, "s_scale", "0.0 to 2.0"),
        (_op, {"safety_checker_type": "sepia"}, "safety_checker_type", "black, blur"),
        (_op, {"seed": -1}, "seed", "0 to 4294967295"),
        (_op, {"seed": 2**32}, "seed", "0 to 4294967295"),
    ]
BAD_PARAMS += [
    (Operation.AVATAR, {"width": 1024}, "width", "64 to 512"),
    (Operation.AVATAR, {"height": 1024}, "height", "64 to 768"),
    (Operation.AVATAR, {"num_inference_steps": 25}, "num_inference_steps", "21, 31 or 41"),
    (Operation.AVATAR, {"samples": 4}, "samples", "1 to 2"),
    (Operation.AVATAR, {"guidance_scale": 12.0}, "guidance_scale", "1.0 to 10.0"),
    (Operation.AVATAR, {"s_scale": 3.0}, "s_scale", "0.0 to 2.0"),
    (
        Operation.AVATAR,
        {"identitynet_strength_ratio": 1.5},
        "identitynet_strength_ratio",
        "0.0 to 1.0",
    ),
    (Operation.AVATAR, {"adapter_strength_ratio": -0.5}, "adapter_strength_ratio", "0.0 to 1.0"),
    (Operation.AVATAR, {"pose_strength": 1.01}, "pose_strength", "0.0 to 1.0"),
    (Operation.AVATAR, {"canny_strength": 2.0}, "canny_strength", "0.0 to 1.0"),
    (
        Operation.AVATAR,
        {"controlnet_selection": ("openpose",)},
        "controlnet_selection",
        "pose, canny or depth",
    ),
    (Operation.AVATAR, {"controlnet_selection": ()}, "controlnet_selection", "pose, canny, depth"),
    (Operation.AVATAR, {"seed": 2**40}, "seed", "0 to 4294967295"),
    (Operation.FLUX_HEADSHOT, {"width": 2049}, "width", "64 to 2048"),
    (Operation.FLUX_HEADSHOT, {"height": 4096}, "height", "64 to 2048"),
    (Operation.FLUX_HEADSHOT, {"num_inference_steps": 27}, "num_inference_steps", "1 to 26"),
    (Operation.FLUX_HEADSHOT, {"num_inference_steps": 0}, "num_inference_steps", "1 to 26"),
    (Operation.FLUX_HEADSHOT, {"samples": 2}, "samples", "one image at a time"),
    (Operation.FLUX_HEADSHOT, {"guidance_scale": 10.5}, "guidance_scale", "1.0 to 10.0"),
    (Operation.FLUX_HEADSHOT, {"guidance_scale": 0.9}, "guidance_scale", "1.0 to 10.0"),
    (Operation.FLUX_HEADSHOT, {"seed": -5}, "seed", "0 to 4294967295"),
]
for _op in Operation:
    BAD_PARAMS.append((_op, {"prompt": "   "}, "prompt", "non-empty"))


@pytest.mark.parametrize(
    ("operation", "bad", "field", "allowed"),
    BAD_PARAMS,
    ids=[f"{op}-{'-'.join(map(str, bad.values()))}" for op, bad, _, _ in BAD_PARAMS],
)
async def test_limits_are_refused_before_the_network(
    operation: Operation, bad: dict[str, Any], field: str, allowed: str
) -> None:
    fields = {"prompt": "a headshot", "seed": 1, **bad}
    # Built by hand, skipping `create`, to prove the client checks again on its own.
    params = GenerationParams(operation=operation, **fields)
    # Every call the client makes is heard (here it would be "unreachable": nothing listens).
    calls: list[str] = []
    async with ModelsLabClient(KEY, "http://127.0.0.1:9", on_call=calls.append) as client:
        with pytest.raises(InvalidRequest) as caught:
            await client.submit(SubmitRequest(params=params, face_image=FACE))
    assert calls == []
    message = str(caught.value)
    assert field in message and allowed in message
    assert KEY not in message
    # `create` refuses the same values with the same words.
    if field != "prompt":
        with pytest.raises(ValueError, match=field):
            GenerationParams.create(operation, **fields)


async def test_unknown_operation_and_empty_id_are_refused_before_the_network() -> None:
    calls: list[str] = []
    async with ModelsLabClient(KEY, "http://127.0.0.1:9", on_call=calls.append) as client:
        with pytest.raises(InvalidRequest, match="operation must be one of headshot"):
            await client.fetch("portrait", "1")  # type: ignore[arg-type]
        with pytest.raises(InvalidRequest, match="provider_id"):
            await client.fetch(Operation.HEADSHOT, " ")
        with pytest.raises(OutputUnavailable, match="http"):
            await client.download_output("file:///etc/passwd", max_bytes=10)
    assert calls == []


@pytest.mark.parametrize("base_url", ["", "ftp://x", "modelslab.com", "http://"])
def test_bad_base_url_is_refused(base_url: str) -> None:
    with pytest.raises(ValueError, match="base_url"):
        ModelsLabClient(KEY, base_url)


async def test_empty_key_is_refused_and_repr_hides_the_key() -> None:
    with pytest.raises(ValueError, match="MODELSLAB_API_KEY"):
        ModelsLabClient("  ")
    async with ModelsLabClient(KEY, "http://127.0.0.1:9") as client:
        assert KEY not in repr(client) and KEY not in str(client)
