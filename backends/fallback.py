"""Two generators as one: jobs go to the first, and to the second when the first fails.

`FALLBACK_BACKEND` builds this. A job moves to the second generator only when the first has
produced nothing: its submit failed (unreachable, out of credits, this operation not served, its
worker down) or it reported the generation failed. So one job is one generation, and the user's
single reserved credit pays for it: nothing is paid twice. A request the generator refused for
its content (no face in the selfie, a banned prompt) is not retried elsewhere: it would be
refused there too.

Provider ids are tagged with the generator's name ("local:…", "modelslab:…") so that fetches
after a restart still reach the right one; an untagged id is the first generator's. A job
handed over while it was processing is answered with its new id, which the engine records and
fetches from then on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from backends.base import Backend, ProviderResult, RequestSource, ResultStatus, SubmitRequest
from backends.errors import BackendError, InvalidRequest, OutputUnavailable, UnknownProviderJob
from backends.params import Operation

log = logging.getLogger(__name__)


class FallbackBackend:
    def __init__(self, primary: Backend, secondary: Backend) -> None:
        self.primary = primary
        self.secondary = secondary
        self.name = f"{primary.name}+{secondary.name}"
        self._by_name = {primary.name: primary, secondary.name: secondary}
        # How to rebuild the requests still running on the primary, to hand over if it fails:
        # the request itself for one submitted here, or the engine's way of rebuilding it from
        # the database for one taken over (after a restart, or from another replica).
        self._pending: dict[str, RequestSource] = {}

    async def start(self) -> None:
        """Start both; one that cannot start leaves its jobs to the other. Fails only when
        neither starts."""
        failures = []
        for backend in (self.primary, self.secondary):
            try:
                await backend.start()
            except Exception as exc:
                log.warning("%s did not start (%s): the other takes its jobs", backend.name, exc)
                failures.append(exc)
        if len(failures) == 2:
            raise failures[0]

    def listen(self, callback: Callable[[str], object]) -> None:
        self.primary.listen(callback)
        self.secondary.listen(callback)

    def owns_output(self, url: str) -> bool:
        return self.primary.owns_output(url) or self.secondary.owns_output(url)

    async def submit(self, request: SubmitRequest) -> ProviderResult:
        try:
            result = await self.primary.submit(request)
        except InvalidRequest:
            raise
        except BackendError as exc:
            log.warning("%s failed (%s): trying %s", self.primary.name, exc, self.secondary.name)
            return await self._hand_over(request)
        if result.status == ResultStatus.FAILED:
            log.warning("%s could not make the image: trying %s", *self._names())
            return await self._hand_over(request)
        tagged = self._tag(self.primary, result)
        if result.status == ResultStatus.PROCESSING and tagged.provider_id:
            self._pending[tagged.provider_id] = _as_source(request)
        return tagged

    def adopt(self, provider_id: str, request: RequestSource) -> None:
        backend, raw_id = self._route(provider_id)
        if backend is self.primary:
            self._pending[provider_id] = request
        backend.adopt(raw_id, request)

    async def fetch(self, operation: Operation, provider_id: str) -> ProviderResult:
        backend, raw_id = self._route(provider_id)
        try:
            result = self._tag(backend, await backend.fetch(operation, raw_id))
        except BackendError as exc:
            if not exc.retryable:  # the job ends here: its selfie is not kept any longer
                self._pending.pop(provider_id, None)
            raise
        if backend is not self.primary or result.status == ResultStatus.PROCESSING:
            return result
        source = self._pending.get(provider_id)
        if result.status == ResultStatus.FAILED and source is not None:
            log.warning("%s could not make the image: trying %s", *self._names())
            # Kept until the hand-over is made: a busy secondary is tried again at the next fetch.
            result = await self._hand_over(await source())
        self._pending.pop(provider_id, None)
        return result

    async def download_output(self, url: str, *, max_bytes: int) -> bytes:
        for backend in (self.primary, self.secondary):
            if backend.owns_output(url):
                return await backend.download_output(url, max_bytes=max_bytes)
        raise OutputUnavailable("no generator knows that image link")

    async def aclose(self) -> None:
        try:
            await self.primary.aclose()
        finally:
            await self.secondary.aclose()

    async def _hand_over(self, request: SubmitRequest) -> ProviderResult:
        return self._tag(self.secondary, await self.secondary.submit(request))

    def _tag(self, backend: Backend, result: ProviderResult) -> ProviderResult:
        if not result.provider_id or result.provider_id.startswith(f"{backend.name}:"):
            return result
        return replace(result, provider_id=f"{backend.name}:{result.provider_id}")

    def _route(self, provider_id: str) -> tuple[Backend, str]:
        name, separator, raw_id = provider_id.partition(":")
        if separator and name in self._by_name:
            return self._by_name[name], raw_id
        if separator and name not in self._by_name:
            raise UnknownProviderJob(f"no generator named {name!r} here")
        return self.primary, provider_id

    def _names(self) -> tuple[str, str]:
        return self.primary.name, self.secondary.name


def _as_source(request: SubmitRequest) -> RequestSource:
    async def source() -> SubmitRequest:
        return request

    return source


def generator_name(backend: Backend, provider_id: str | None) -> str:
    """The name of the generator that made a job's images (`provider_id`: the job's id there).
    Behind a fallback it is either one, named in the id's tag; otherwise the backend's own."""
    if not isinstance(backend, FallbackBackend):
        return str(backend.name)
    name, separator, _ = (provider_id or "").partition(":")
    if separator and name in backend._by_name:
        return name
    return str(backend.primary.name)
