"""ModelsLab's wire format: the request body of each operation and the parsing of every answer.

Pure functions only: no I/O, no clock. The provider's documented examples send numbers as
strings, ids as integers or strings and the error text as `message` or `messege`; everything
here accepts every reading and never lets a KeyError or TypeError escape on a garbled body.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from backends.base import ProviderResult, ResultStatus, SubmitRequest
from backends.errors import InvalidRequest, OutputUnavailable, ProviderUnavailable
from backends.params import LIMITS, GenerationParams, Operation

MAX_MESSAGE_CHARS = 200
REDACTED = "[redacted]"


@dataclass(frozen=True)
class Endpoint:
    submit_path: str
    fetch_prefix: str
    image_field: str

    def fetch_path(self, provider_id: str) -> str:
        return f"{self.fetch_prefix}/{quote(provider_id, safe='')}"


ENDPOINTS: dict[Operation, Endpoint] = {
    Operation.HEADSHOT: Endpoint(
        "/api/v6/image_editing/head_shot", "/api/v6/image_editing/fetch", "face_image"
    ),
    Operation.AVATAR: Endpoint(
        "/api/v6/image_editing/avatar_gen", "/api/v6/image_editing/fetch", "init_image"
    ),
    Operation.FACEGEN: Endpoint(
        "/api/v1/enterprise/face_gen/make_gen", "/api/v1/enterprise/face_gen/fetch", "face_image"
    ),
    Operation.FLUX_HEADSHOT: Endpoint(
        "/api/v1/enterprise/flux_headshot/make_gen",
        "/api/v1/enterprise/flux_headshot/fetch",
        "face_image",
    ),
}

# The tuning fields each operation sends when set: those its limits know, beyond the two that
# every operation sends. Derived, so an option added to the limits table is also sent.
_ALWAYS_SENT = ("num_inference_steps", "guidance_scale")
_TUNING_FIELDS: dict[Operation, tuple[str, ...]] = {
    op: tuple(name for name in LIMITS[op].rules if name not in _ALWAYS_SENT) for op in Operation
}

_MIME = re.compile(r"image/[a-z0-9][a-z0-9.+-]{0,40}")


# --- requests -------------------------------------------------------------------------------


def data_uri(data: bytes, mime: str, field: str) -> str:
    """`data:<mime>;base64,...`, the form ModelsLab takes for an inline image."""
    if not isinstance(data, bytes | bytearray | memoryview) or not data:
        raise InvalidRequest(f"{field} is empty: send a JPEG, PNG or WebP selfie")
    if not isinstance(mime, str) or not _MIME.fullmatch(mime):
        raise InvalidRequest(f"{field} must have an image MIME type such as image/jpeg")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def build_submit_body(request: SubmitRequest, *, key: str) -> dict[str, Any]:
    """The JSON body for `request`. Its params must be valid and, where the operation requires
    one, carry a seed (the client picks one first)."""
    params = request.params
    operation = params.operation
    if params.limits.seed_required and params.seed is None:
        raise InvalidRequest(f"seed is required for {operation}")
    endpoint = ENDPOINTS[operation]
    body: dict[str, Any] = {
        "key": key,
        "prompt": params.prompt,
        endpoint.image_field: data_uri(
            request.face_image, request.face_image_type, endpoint.image_field
        ),
    }
    if params.negative_prompt is not None:
        body["negative_prompt"] = params.negative_prompt
    if params.width is not None:
        body["width"] = params.width
    if params.height is not None:
        body["height"] = params.height
    body["samples"] = params.samples
    _put_if_set(body, params, _ALWAYS_SENT)
    body["safety_checker"] = params.safety_checker
    _put_if_set(body, params, _TUNING_FIELDS[operation])
    if operation is Operation.AVATAR:
        _add_avatar_fields(body, request)
    body["seed"] = params.seed
    # Images go inline as data URIs, which ModelsLab reads only with base64 on.
    body["base64"] = True
    body["webhook"] = request.webhook_url
    body["track_id"] = request.track_id
    return body


def _put_if_set(body: dict[str, Any], params: GenerationParams, names: Iterable[str]) -> None:
    for name in names:
        value = getattr(params, name)
        if value is not None:
            body[name] = value


def _add_avatar_fields(body: dict[str, Any], request: SubmitRequest) -> None:
    if request.pose_image is not None:
        body["pose_image"] = data_uri(request.pose_image, request.pose_image_type, "pose_image")
    selection = request.params.controlnet_selection
    if selection:
        # The docs describe one value ("default pose"); several travel comma-separated.
        body["controlnet_selection"] = ",".join(selection)


def fetch_body(key: str) -> dict[str, Any]:
    return {"key": key}


# --- answers --------------------------------------------------------------------------------


class ErrorKind(StrEnum):
    """What an error body means, read from its text where the HTTP status says nothing."""

    INVALID = "invalid"
    AUTH = "auth"
    CREDITS = "credits"
    PLAN = "plan"
    RATE_LIMIT = "rate_limit"
    UNKNOWN_JOB = "unknown_job"


_ERROR_PATTERNS: tuple[tuple[ErrorKind, re.Pattern[str]], ...] = (
    (ErrorKind.RATE_LIMIT, re.compile(r"rate.?limit|too many (queued )?requests", re.I)),
    (ErrorKind.AUTH, re.compile(r"(invalid|wrong|missing|incorrect) api.?key|unauthori", re.I)),
    (ErrorKind.CREDITS, re.compile(r"credit|insufficient|balance|top.?up|payment", re.I)),
    (ErrorKind.PLAN, re.compile(r"\bplan\b|subscri|upgrade", re.I)),
    (
        ErrorKind.UNKNOWN_JOB,
        re.compile(
            r"not found|no (such )?(request|job)|invalid (request )?id|does not exist", re.I
        ),
    ),
)

_SUCCESS = frozenset({"success"})
_PROCESSING = frozenset({"processing"})
_FAILED = frozenset({"error", "failed"})


def json_object(content: bytes) -> dict[str, Any] | None:
    """The JSON object in `content`, or None for an HTML page, broken JSON or JSON that is not
    an object (a proxy or an outage answered, not the API)."""
    try:
        value = json.loads(content)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def decode_object(content: bytes) -> dict[str, Any]:
    """Like `json_object`, raising ProviderUnavailable (retryable) for a garbled body."""
    value = json_object(content)
    if value is None:
        # Raised outside the except clause above, so nothing chains the body along.
        raise ProviderUnavailable("ModelsLab sent an answer that is not a JSON object")
    return value


def is_known(body: Mapping[str, Any]) -> bool:
    """Whether the body has one of the statuses the API documents."""
    return status_of(body) in _SUCCESS | _PROCESSING | _FAILED


def parse_result(body: Mapping[str, Any], *, secrets: Iterable[str] = ()) -> ProviderResult:
    """A submit, fetch or webhook answer as a ProviderResult; `error` and `failed` become
    FAILED. `outputs` only ever lists finished images: a processing answer's `future_links`
    answer 404 or an HTML page until the job ends, so they are left out (fetch gives the
    outputs once it says success). Secrets found in the provider's message are redacted."""
    status = status_of(body)
    provider_id = parse_id(body.get("id"))
    if status in _SUCCESS:
        outputs = parse_urls(body.get("output")) or parse_urls(body.get("proxy_links"))
        return ProviderResult(
            status=ResultStatus.SUCCESS,
            provider_id=provider_id,
            outputs=outputs,
            generation_time=parse_number(body.get("generationTime")),
            seed=parse_seed(body.get("meta")),
        )
    if status in _PROCESSING:
        return ProviderResult(
            status=ResultStatus.PROCESSING,
            provider_id=provider_id,
            eta_seconds=parse_number(body.get("eta")),
            message=message_of(body, secrets=secrets),
            seed=parse_seed(body.get("meta")),
        )
    if status in _FAILED:
        return ProviderResult(
            status=ResultStatus.FAILED,
            provider_id=provider_id,
            message=message_of(body, secrets=secrets) or "the generation failed",
        )
    raise ProviderUnavailable("ModelsLab sent an answer with an unknown status")


def status_of(body: Mapping[str, Any]) -> str:
    status = body.get("status")
    return status.strip().lower() if isinstance(status, str) else ""


def is_error(body: Mapping[str, Any]) -> bool:
    return status_of(body) in _FAILED


def classify_error(body: Mapping[str, Any]) -> ErrorKind:
    if parse_number(body.get("retry_after")) is not None:
        return ErrorKind.RATE_LIMIT
    text = message_of(body)
    for kind, pattern in _ERROR_PATTERNS:
        if pattern.search(text):
            return kind
    return ErrorKind.INVALID


def message_of(body: Mapping[str, Any], *, secrets: Iterable[str] = ()) -> str:
    """The provider's message (`message`, or the misspelt `messege`), flattened to one short
    line with every secret redacted; "" when there is none."""
    raw = body.get("message")
    if raw is None or raw == "":
        raw = body.get("messege")
    if raw is None or raw == "":
        raw = body.get("error")
    return sanitise(_flatten(raw), secrets=secrets)


def _flatten(value: object) -> str:
    # Validation errors come as {"field": ["reason", ...]}.
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_flatten(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return "; ".join(_flatten(v) for v in value)
    return str(value)


def sanitise(text: str, *, secrets: Iterable[str] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = " ".join(text.split())
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1].rstrip() + "…"
    return text


def retry_after(body: Mapping[str, Any] | None, header: str | None) -> float | None:
    """Seconds to wait from the body's `retry_after`, else a numeric `Retry-After` header."""
    if body is not None:
        seconds = parse_number(body.get("retry_after"))
        if seconds is not None:
            return seconds
    return parse_number(header)


# --- values ---------------------------------------------------------------------------------

_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)")


def parse_number(value: object) -> float | None:
    """A non-negative finite number from a number or a numeric string ("146.52", "30",
    "12.5 seconds"); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        match = _NUMBER.match(value)
        if match is None:
            return None
        number = float(match.group(1))
    else:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return number


def parse_int(value: object) -> int | None:
    if isinstance(value, list | tuple):
        return parse_int(value[0]) if value else None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    number = parse_number(value)
    if number is not None and number.is_integer():
        return int(number)
    return None


def parse_id(value: object) -> str | None:
    """ids come as integers or strings: always a string here."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def parse_seed(meta: object) -> int | None:
    if not isinstance(meta, Mapping):
        return None
    return parse_int(meta.get("seed"))


def parse_urls(value: object) -> tuple[str, ...]:
    """A list of URLs, one URL as a string, or the empty string fetch sends while processing."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        return ()
    urls = (item.strip() for item in value if isinstance(item, str))
    return tuple(url for url in urls if url.startswith(("http://", "https://")))


# --- outputs --------------------------------------------------------------------------------

_DATA_PREFIX = re.compile(rb"\s*data:[^,]{0,100};base64,", re.I)


def decode_base64_output(text: bytes) -> bytes:
    """The image in a `.base64` output: base64 text, maybe prefixed `data:image/...;base64,`."""
    match = _DATA_PREFIX.match(text)
    if match:
        text = text[match.end() :]
    compact = b"".join(text.split())
    compact += b"=" * (-len(compact) % 4)
    image = _b64decode(compact)
    if not image:
        raise OutputUnavailable("the output is not valid base64 image data")
    return image


def _b64decode(data: bytes) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return b""
