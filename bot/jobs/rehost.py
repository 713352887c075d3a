"""Copies a provider's outputs into our own store before its links expire (24 h at ModelsLab).

A GPU worker of the fleet writes its outputs to our store itself: those (`stored:` links) are
only checked to be there, never downloaded again."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

from backends.base import Backend, StoredOutput
from backends.errors import BackendError, OutputTooLarge, OutputUnavailable
from bot.i18n import N_
from bot.images import ImageInfo, ImageRejected, image_workers
from bot.tokens import new_token
from storage.imagestore import ImageStore
from storage.records import OutputRecord

log = logging.getLogger(__name__)


class RehostFailed(Exception):
    """An output could not be kept. The message is the user-facing reason: English, marked
    with `N_`, translated where it is shown (`bot.jobs.reasons`). `stored`: the keys of the
    job's other outputs, stored before this one failed (for whoever ends the job to delete,
    if nothing else uses them)."""

    def __init__(self, reason: str, stored: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.stored = stored


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 1.0
    cap_seconds: float = 60.0

    def delay(self, attempt: int) -> float:
        return random.uniform(0, min(self.cap_seconds, self.base_seconds * 2**attempt))


@dataclass(frozen=True)
class _Checked:
    """An output downloaded, proved an image and stored under `key`."""

    key: str
    info: ImageInfo
    size_bytes: int


# What checking one output gives: it stored now, or the record of one in our store already.
_Result = _Checked | OutputRecord


class Rehoster:
    """Downloads, checks and stores a job's outputs."""

    def __init__(
        self,
        backend: Backend,
        store: ImageStore,
        *,
        max_bytes: int,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._backend = backend
        self._store = store
        self._max_bytes = max_bytes
        self._retry = retry or RetryPolicy()

    async def rehost(
        self, job_id: str, urls: tuple[str, ...], *, deadline: float
    ) -> list[OutputRecord]:
        """Download, check and store every output before `deadline` (a time.monotonic())."""
        if not urls:
            raise RehostFailed(N_("the generator returned no image"))
        tasks = [self._check(job_id, position, url, deadline) for position, url in enumerate(urls)]
        # Each output's own outcome: one that fails does not leave the others running.
        results = await asyncio.gather(*tasks, return_exceptions=True)
        checked: list[_Result] = []
        for result in results:
            if isinstance(result, RehostFailed):
                stored = tuple(one.key for one in results if isinstance(one, _Checked))
                raise RehostFailed(str(result), stored) from None
            if isinstance(result, BaseException):
                raise result
            checked.append(result)
        return [self._record(job_id, position, one) for position, one in enumerate(checked)]

    async def _check(self, job_id: str, position: int, url: str, deadline: float) -> _Result:
        stored = StoredOutput.parse(url) if self._backend.owns_output(url) else None
        if stored is not None:
            return await self._kept(job_id, position, stored)
        data = await self._download(job_id, url, deadline)
        try:
            info, key = await image_workers().inspect_into(self._store, data)
        except ImageRejected as exc:
            log.warning("job %s: output %d refused (%s): %s", job_id, position, exc.reason, exc)
            if exc.reason in ("too_slow", "crashed"):  # our checking failed, not their image
                raise RehostFailed(N_("the generated image could not be checked here")) from None
            raise RehostFailed(
                N_("the generator sent back something that isn't an image")
            ) from None
        return _Checked(key, info, len(data))

    def _record(self, job_id: str, position: int, checked: _Result) -> OutputRecord:
        if isinstance(checked, OutputRecord):
            return checked  # in our store already
        return OutputRecord(
            job_id=job_id,
            position=position,
            content_key=checked.key,
            public_token=new_token(),
            content_type=checked.info.content_type,
            width=checked.info.width,
            height=checked.info.height,
            size_bytes=checked.size_bytes,
        )

    async def _kept(self, job_id: str, position: int, stored: StoredOutput) -> OutputRecord:
        if stored.size_bytes > self._max_bytes:
            raise RehostFailed(N_("the generated image was larger than we accept"))
        if not await self._store.exists(stored.key):
            log.warning("job %s: output %d is not in the image store", job_id, position)
            raise RehostFailed(N_("the generated image could not be found in our store"))
        return OutputRecord(
            job_id=job_id,
            position=position,
            content_key=stored.key,
            public_token=new_token(),
            content_type=stored.content_type,
            width=stored.width,
            height=stored.height,
            size_bytes=stored.size_bytes,
        )

    async def _download(self, job_id: str, url: str, deadline: float) -> bytes:
        attempt = 0
        while True:
            try:
                return await self._backend.download_output(url, max_bytes=self._max_bytes)
            except OutputUnavailable:
                raise RehostFailed(
                    N_("the generated image expired before it could be saved")
                ) from None
            except OutputTooLarge:
                raise RehostFailed(N_("the generated image was larger than we accept")) from None
            except BackendError as exc:
                wait = self._retry.delay(attempt)
                if time.monotonic() + wait >= deadline:
                    raise RehostFailed(
                        N_("the generated image expired before it could be saved")
                    ) from None
                log.info("job %s: download failed (%s), retrying in %.1f s", job_id, exc, wait)
                attempt += 1
                await asyncio.sleep(wait)
