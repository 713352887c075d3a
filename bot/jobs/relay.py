"""Job events across processes: whoever follows a job sees its events, whichever process drives
it (a follower on replica B, the job on replica A).

An event goes to this process's own followers at once, and over the coordination's channel
(LISTEN/NOTIFY on PostgreSQL) to every other process, which hands it to its followers. A job's
end travels as a mark only: each process rebuilds the final event from the database, which
holds all of it. Messages can be lost (a connection made again), so a follower of a job driven
elsewhere is also checked on now and then: a job found ended gets its final event all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from bot.i18n import N_
from bot.jobs.event_bus import EventBus
from bot.jobs.events import (
    FINAL_EVENTS,
    Failed,
    JobEvent,
    Progress,
    Queued,
    Started,
    completed_event,
)
from storage.coordination import Coordination
from storage.jobs import JobRepository
from storage.records import JobRecord, JobState

log = logging.getLogger(__name__)

EVENTS = "job_events"
WAKE = "job_wake"
# How often the followers of jobs driven elsewhere are checked on, in case a message was lost.
CHECK_SECONDS = 5.0


class EventRelay:
    def __init__(
        self,
        *,
        bus: EventBus,
        coordination: Coordination,
        jobs: JobRepository,
        origin: str,
        image_base_url: str,
        driven_here: Callable[[str], bool],
        check_seconds: float = CHECK_SECONDS,
    ) -> None:
        self._bus = bus
        self._coordination = coordination
        self._jobs = jobs
        self._origin = origin
        self._image_base_url = image_base_url.rstrip("/")
        self._driven_here = driven_here
        self._check_seconds = check_seconds
        self._pending: set[asyncio.Task[None]] = set()
        self._checker: asyncio.Task[None] | None = None

    def start(self, on_wake: Callable[[str], object]) -> None:
        """Listen for other processes' events, and for wake-ups of jobs (a webhook that
        reached another process): `on_wake(job_id)`."""
        self._coordination.listen(EVENTS, self._received)
        self._coordination.listen(WAKE, on_wake)
        self._checker = asyncio.create_task(self._check_periodically(), name="event-check")

    async def stop(self) -> None:
        tasks = [*self._pending, *([self._checker] if self._checker else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._checker = None

    def publish(self, event: JobEvent) -> None:
        """Tell this process's followers now, and the other processes' through the channel."""
        self._bus.publish(event)
        if self._coordination.reaches_others:
            self._later(self._coordination.publish(EVENTS, encode(event, self._origin)))

    def wake_elsewhere(self, job_id: str) -> None:
        """A webhook for a job this process does not drive: wake it where it is driven."""
        self._later(self._coordination.publish(WAKE, job_id))

    async def final_event(self, job: JobRecord) -> JobEvent:
        """A finished job's final event, rebuilt from the database."""
        if job.state == JobState.SUCCEEDED:
            outputs = await self._jobs.outputs(job.id)
            return completed_event(job, outputs, self._image_base_url)
        retry = job.selfie_key is not None
        reason = job.error or N_("it was cancelled")  # as stored: `reasons.shown` reads it
        return Failed(job.id, reason, refunded=True, can_retry=retry)

    # ---- what comes in ----------------------------------------------------------------------

    def _received(self, payload: str) -> None:
        try:
            message = json.loads(payload)
            if message.get("o") == self._origin:
                return  # our own, told to our followers already
            job_id = str(message["j"])
            if not self._bus.watching(job_id):
                return
            if message["k"] == "ended":
                self._later(self._publish_final(job_id))
                return
            self._bus.publish(decode(message))
        except (ValueError, KeyError, TypeError):
            log.warning("an unreadable job event came over the channel; ignored")

    async def _publish_final(self, job_id: str) -> None:
        job = await self._jobs.get(job_id)
        if job is not None and job.state.finished:
            self._bus.publish(await self.final_event(job))

    async def _check_periodically(self) -> None:
        while True:
            await asyncio.sleep(self._check_seconds)
            elsewhere = [job for job in self._bus.watched_jobs if not self._driven_here(job)]
            try:
                for job_id in elsewhere:
                    await self._publish_final(job_id)
            except Exception:
                log.exception("checking on followed jobs failed; trying again later")

    def _later(self, step: Any) -> None:
        task = asyncio.ensure_future(step)
        self._pending.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Future[None]) -> None:
        self._pending.discard(task)  # type: ignore[arg-type]
        if not task.cancelled() and task.exception() is not None:
            with contextlib.suppress(Exception):
                log.warning("relaying a job event failed: %s", task.exception())


def encode(event: JobEvent, origin: str) -> str:
    """An event as the channel carries it: small, and a job's end as a mark only."""
    message: dict[str, Any] = {"o": origin, "j": event.job_id}
    if isinstance(event, FINAL_EVENTS):
        message["k"] = "ended"
    elif isinstance(event, Queued):
        message |= {"k": "queued", "p": event.position, "e": event.eta_seconds}
    elif isinstance(event, Started):
        message |= {"k": "started", "e": event.eta_seconds}
    else:
        message |= {"k": "progress", "s": event.stage}
    return json.dumps(message, separators=(",", ":"))


def decode(message: dict[str, Any]) -> JobEvent:
    """A non-final event read back from the channel; ValueError/KeyError if it is not one."""
    job_id, kind = str(message["j"]), message["k"]
    if kind == "queued":
        return Queued(job_id, int(message["p"]), _seconds(message.get("e")))
    if kind == "started":
        return Started(job_id, _seconds(message.get("e")))
    if kind == "progress":
        return Progress(job_id, str(message["s"]))
    raise ValueError(f"not an event kind: {kind!r}")


def _seconds(value: Any) -> float | None:
    return None if value is None else float(value)
