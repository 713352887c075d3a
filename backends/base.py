"""What the job engine needs from a generator, whichever it is (ModelsLab, a local GPU)."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol
from urllib.parse import parse_qsl

from backends.params import GenerationParams, Operation


class ResultStatus(StrEnum):
    SUCCESS = "success"
    PROCESSING = "processing"
    FAILED = "failed"


@dataclass(frozen=True)
class ProviderResult:
    """One answer about a generation, from submit, fetch or a confirmed webhook."""

    status: ResultStatus
    provider_id: str | None = None
    outputs: tuple[str, ...] = ()
    eta_seconds: float | None = None
    message: str | None = None
    generation_time: float | None = None
    seed: int | None = None


@dataclass(frozen=True)
class SubmitRequest:
    """A generation to start. Images are sanitised bytes; their MIME type says their format."""

    params: GenerationParams
    face_image: bytes
    face_image_type: str = "image/jpeg"
    pose_image: bytes | None = None
    pose_image_type: str = "image/jpeg"
    webhook_url: str | None = None
    track_id: str | None = None
    # Where the selfie and the pose image are in our image store, for a generator that reads
    # the store itself (a GPU worker of the fleet) instead of being sent the bytes.
    face_key: str | None = None
    pose_key: str | None = None


STORED_SCHEME = "stored:"
_STORED_KEY = re.compile(r"[0-9a-f]{64}\.(png|jpg|webp)")
_STORED_TYPES = {"png": "image/png", "jpg": "image/jpeg", "webp": "image/webp"}
_MAX_SIDE = 65535
_MAX_BYTES = 2**31


@dataclass(frozen=True)
class StoredOutput:
    """An output a generator already wrote to our image store (a GPU worker of the fleet):
    kept as it is, never downloaded."""

    key: str  # content-addressed, as ImageStore.put makes it: 64 hex digits and an extension
    content_type: str
    width: int
    height: int
    size_bytes: int

    @property
    def url(self) -> str:
        return (
            f"{STORED_SCHEME}{self.key}?type={self.content_type}"
            f"&width={self.width}&height={self.height}&bytes={self.size_bytes}"
        )

    @classmethod
    def parse(cls, url: str) -> StoredOutput | None:
        """The output a `stored:` link names; None unless it is exactly that form."""
        if not url.startswith(STORED_SCHEME):
            return None
        key, separator, query = url.removeprefix(STORED_SCHEME).partition("?")
        matched = _STORED_KEY.fullmatch(key)
        if not separator or matched is None:
            return None
        try:
            fields = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            return None
        values = dict(fields)
        if len(values) != len(fields) or set(values) != {"type", "width", "height", "bytes"}:
            return None
        if values["type"] != _STORED_TYPES[matched.group(1)]:
            return None
        width = _bounded(values["width"], _MAX_SIDE)
        height = _bounded(values["height"], _MAX_SIDE)
        size = _bounded(values["bytes"], _MAX_BYTES)
        if width is None or height is None or size is None:
            return None
        stored = cls(key, values["type"], width, height, size)
        return stored if stored.url == url else None


def _bounded(text: str, most: int) -> int | None:
    if not text.isascii() or not text.isdigit():
        return None
    value = int(text)
    return value if 1 <= value <= most else None


# Rebuilds a job's SubmitRequest from what the database and the image store hold.
RequestSource = Callable[[], Awaitable["SubmitRequest"]]


class Backend(Protocol):
    """A generator. Raises `backends.errors.BackendError` subclasses, never anything else."""

    name: str

    async def start(self) -> None:
        """Get ready to take jobs (a local GPU loads its models); called once at start-up."""
        ...

    def listen(self, callback: Callable[[str], object]) -> None:
        """Have `callback(track_id)` called when a job may have finished (a remote generator
        says so through webhooks instead, and ignores this)."""
        ...

    def owns_output(self, url: str) -> bool:
        """Whether an output link is one of this generator's."""
        ...

    async def submit(self, request: SubmitRequest) -> ProviderResult: ...

    async def fetch(self, operation: Operation, provider_id: str) -> ProviderResult:
        """Where a generation stands. An answer with another `provider_id` means the job now
        goes by that id (a fallback moved it): later fetches use it."""
        ...

    def adopt(self, provider_id: str, request: RequestSource) -> None:
        """A generation this process follows but did not submit (taken over after a restart,
        or from another replica): `request()` rebuilds what it was submitted from, should the
        generator need it again (a fallback handing it over). Most need nothing."""
        ...

    async def download_output(self, url: str, *, max_bytes: int) -> bytes: ...

    async def aclose(self) -> None: ...
