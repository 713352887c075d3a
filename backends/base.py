"""What the job engine needs from a generator, whichever it is (ModelsLab, a local GPU)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

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
