"""Drives every job from `queued` to `succeeded` or `failed`; resumes them after a restart.

One asyncio task per unfinished job. A job waits in the dispatcher for a provider slot, is
submitted, then waits for its result: a webhook only wakes it early (the body is never trusted),
the eta-driven poll is the fallback, and both confirm through the provider's fetch endpoint.
Every step is a guarded transition, so a duplicate webhook, a late poll or a second process
can never move a job backwards or settle its credits twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from backends.base import Backend, ProviderResult, ResultStatus, SubmitRequest
from backends.errors import (
    AuthenticationFailed,
    BackendError,
    InsufficientCredits,
    InvalidRequest,
    PlanRestricted,
    ProviderUnreachable,
    RateLimited,
    UnknownProviderJob,
)
from backends.fallback import generator_name
from backends.params import GenerationParams
from bot.i18n import N_
from bot.jobs import reasons
from bot.jobs.dispatcher import CapacitySource, Dispatcher
from bot.jobs.event_bus import EventBus
from bot.jobs.events import Failed, JobEvent, Progress, Queued, Started, completed_event
from bot.jobs.identity import AttemptPlan, IdentityGate, first_plan
from bot.jobs.rehost import Rehoster, RehostFailed, RetryPolicy
from bot.jobs.relay import EventRelay
from bot.log_context import bind_driven_job, job_context, outside_job
from bot.metrics import Metrics
from bot.tokens import new_token, token_hash
from storage.coordination import Coordination
from storage.dispatch import DispatchQueue
from storage.identity import MeasuredImage, best_per_slot
from storage.imagestore import ImageNotFound, ImageStore
from storage.jobs import JobRepository
from storage.leases import Lease
from storage.records import GeneratorAnswer, JobRecord, JobState, OutputRecord

log = logging.getLogger(__name__)

DEFAULT_GENERATION_SECONDS = 20.0
# A stored selfie no job points at is an orphan only once this old: its job may be being
# inserted (the selfie is stored first).
ORPHAN_GRACE = timedelta(minutes=10)
SWEEP_LOCK = "input-sweep"
ANNOUNCE_SECONDS = 0.25


class JobFailure(Exception):
    """Ends a job as failed: `reason` is an English message marked with `N_` (shown to the user
    in their language), `detail` what the provider said, if anything. `str()` is the reason as
    stored (`reasons.stored`)."""

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reasons.stored(reason, detail))


class JobMovedOn(Exception):
    """A guarded transition found the job no longer where we left it: stop driving it."""


@dataclass(frozen=True)
class EngineTimings:
    min_poll_seconds: float = 1.0
    max_poll_seconds: float = 30.0
    job_timeout_seconds: float = 1800.0
    link_ttl_seconds: float = 24 * 3600.0
    busy_retry_rounds: int = 5
    # How often stored selfies that no job needs any more are deleted.
    input_sweep_seconds: float = 60.0
    # A job's lease: renewed every third of this while its process drives it; once it has
    # run out (the process died), another process takes the job over.
    lease_seconds: float = 30.0
    # How often a follower of a job driven by another process is checked on (a lost message).
    event_check_seconds: float = 5.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class JobEngine:
    def __init__(
        self,
        *,
        jobs: JobRepository,
        dispatch_queue: DispatchQueue,
        backend: Backend,
        store: ImageStore,
        events: EventBus,
        coordination: Coordination,
        owner: str,
        capacity: int | CapacitySource,
        image_base_url: str,
        webhook_base_url: str | None,
        max_output_bytes: int,
        timings: EngineTimings | None = None,
        input_retention_seconds: float = 0.0,
        identity: IdentityGate | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._jobs = jobs
        self._metrics = metrics or Metrics()
        self._identity = identity
        self._backend = backend
        self._store = store
        self._events = events
        self._coordination = coordination
        self._timings = timings or EngineTimings()
        self.lease = Lease(owner, self._timings.lease_seconds)
        self.relay = EventRelay(
            bus=events,
            coordination=coordination,
            jobs=jobs,
            origin=owner,
            image_base_url=image_base_url,
            driven_here=lambda job_id: job_id in self._tasks,
            check_seconds=self._timings.event_check_seconds,
        )
        self._keeper: asyncio.Task[None] | None = None
        self._image_base_url = image_base_url.rstrip("/")
        self._webhook_base_url = webhook_base_url.rstrip("/") if webhook_base_url else None
        self._input_retention = timedelta(seconds=input_retention_seconds)
        self._sweeper: asyncio.Task[None] | None = None
        self._rehoster = Rehoster(
            backend, store, max_bytes=max_output_bytes, retry=self._timings.retry
        )
        self.dispatcher = Dispatcher(
            queue=dispatch_queue,
            coordination=coordination,
            capacity=capacity,
            origin=owner,
            check_seconds=self._timings.event_check_seconds,
            on_change=self._positions_changed,
        )
        self._dispatch_queue = dispatch_queue
        self._announcement: asyncio.Task[None] | None = None
        self._stopping = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._endings: set[asyncio.Task[Any]] = set()
        # Each job's write still under way: its move to processing, written while its result
        # is awaited. Whatever writes the job next waits for it first (`_written`).
        self._unwritten: dict[str, asyncio.Task[JobRecord | None]] = {}
        self._nudges: dict[str, asyncio.Event] = {}
        # The webhook token hash of each job driven here, both ways: a webhook for one of them
        # is matched without a read (every other token is looked up in the database).
        self._webhook_jobs: dict[str, str] = {}
        self._webhook_tokens: dict[str, str] = {}
        self._announced: dict[str, int] = {}
        self._typical: tuple[float, float] | None = None  # (seconds, when worked out)

    # ---- life cycle -------------------------------------------------------------------

    async def begin(self, *, take_over: bool) -> int:
        """Start keeping the leases of the jobs this process drives. With `take_over` (the
        service), also drive every unfinished job that nobody holds a live lease on (its
        process stopped or died), now and from then on, and sweep stored inputs no job needs.
        `generate` drives its own job only. Returns how many jobs were taken over now."""
        self.relay.start(on_wake=self.nudge)
        self.dispatcher.start()
        try:
            # Known from the start (the first waiting jobs' ETAs); then read at every pass.
            await self.dispatcher.current_capacity()
        except Exception as exc:
            log.warning("the generator's capacity could not be read yet: %s", type(exc).__name__)
        taken = await self._take_over() if take_over else 0
        if take_over:
            if await self._coordination.try_lock(SWEEP_LOCK):
                await self.sweep_inputs()
                await self._sweep_unfinished_writes()
            self._sweeper = asyncio.create_task(self._sweep_periodically(), name="input-sweeper")
        self._keeper = asyncio.create_task(self._keep_leases(take_over), name="lease-keeper")
        return taken

    async def _take_over(self) -> int:
        jobs = await self._jobs.take_over(self.lease)
        for job in jobs:
            self.start(job)
        if jobs:
            log.info("took over %d unfinished job(s)", len(jobs))
        return len(jobs)

    async def _keep_leases(self, take_over: bool) -> None:
        while True:
            await asyncio.sleep(self.lease.seconds / 3)
            try:
                # Only the jobs driven before the renewal began: one started meanwhile may not
                # be in the answer yet.
                driving = dict(self._tasks)
                renewed = await self._jobs.renew_leases(self.lease, driving)
                for job_id, task in driving.items():
                    if job_id not in renewed and not task.done():
                        # Ended just now (its ending goes on by itself), or another process
                        # took it over while we stalled past the lease: stop driving it.
                        with job_context(job_id):
                            log.info("job %s: no longer held here (ended, or taken over)", job_id)
                        task.cancel()
                if take_over:
                    await self._take_over()
            except Exception:
                log.exception("keeping job leases failed; trying again shortly")

    async def stop(self) -> None:
        """Stop driving jobs; they stay in the database, for the next process to take over."""
        self._stopping = True
        if self._announcement is not None:
            self._announcement.cancel()
        tasks = list(self._tasks.values())
        for extra in (self._sweeper, self._keeper):
            if extra is not None:
                tasks.append(extra)
        self._sweeper = self._keeper = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*self._endings, return_exceptions=True)
        await self.relay.stop()
        await self.dispatcher.stop()
        try:
            # Let the next process (a restart, another replica) take them at once.
            await self._jobs.release_leases(self.lease.owner)
        except Exception:
            log.exception("releasing job leases failed: they run out by themselves")

    def start(self, job: JobRecord) -> None:
        if job.id in self._tasks or self._stopping:
            return  # a job that arrives while stopping waits in the database for the next start
        self._nudges[job.id] = asyncio.Event()
        task = asyncio.create_task(self._drive(job), name=f"job-{job.id}")
        self._tasks[job.id] = task
        task.add_done_callback(lambda _t, job_id=job.id: self._forget(job_id))

    def wake(self, job_id: str) -> None:
        """A webhook said this job may have ended: check it now, here or where it is driven."""
        if not self.nudge(job_id):
            self.relay.wake_elsewhere(job_id)

    def nudge(self, job_id: str) -> bool:
        """A webhook said this job may have ended: check it now. False if we are not driving it."""
        event = self._nudges.get(job_id)
        if event is None:
            return False
        event.set()
        return True

    async def job_for_webhook(self, webhook_token_hash: str) -> str | None:
        """The unfinished job a provider's webhook token belongs to: one driven here by its
        latest token, else looked up in the database, so that it is matched whichever process
        receives it, even after a restart."""
        job_id = self._webhook_jobs.get(webhook_token_hash)
        if job_id is not None:
            return job_id
        return await self._jobs.id_for_webhook(webhook_token_hash)

    def _note_webhook_token(self, job_id: str, webhook_token_hash: str | None) -> None:
        """The job's token is now this one (None: none); its earlier one matches no more."""
        earlier = self._webhook_tokens.pop(job_id, None)
        if earlier is not None:
            self._webhook_jobs.pop(earlier, None)
        if webhook_token_hash is not None:
            self._webhook_tokens[job_id] = webhook_token_hash
            self._webhook_jobs[webhook_token_hash] = job_id

    async def wait_idle(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    @property
    def active_jobs(self) -> int:
        return len(self._tasks)

    def _forget(self, job_id: str) -> None:
        self._tasks.pop(job_id, None)
        self._nudges.pop(job_id, None)
        self._announced.pop(job_id, None)
        self._note_webhook_token(job_id, None)
        self.dispatcher.forget(job_id)
        unwritten = self._unwritten.pop(job_id, None)
        if unwritten is not None:  # the job's task ended before it: it goes on alone
            self._endings.add(unwritten)
            unwritten.add_done_callback(self._endings.discard)
            unwritten.add_done_callback(lambda write: _log_unwritten(job_id, write))
        if not self._stopping:
            self.dispatcher.changed()

    # ---- one job ------------------------------------------------------------------------

    async def _drive(self, job: JobRecord) -> None:
        await bind_driven_job(job, self._jobs)  # every line of this task (and its children)
        try:
            if job.state == JobState.PROCESSING and job.provider_id is not None:
                # Sent by another process (or before a restart): the generator may need the
                # request again (a fallback handing it over), rebuilt from the job.
                sent = job
                self._backend.adopt(job.provider_id, lambda: self._request_for(sent, None))
            while True:
                if job.state == JobState.QUEUED:
                    waited = time.monotonic()
                    await self.dispatcher.acquire(job.id)
                    self._metrics.stage("queue_wait", time.monotonic() - waited)
                if job.state in (JobState.QUEUED, JobState.SUBMITTED):
                    job = await self._submit(job)
                if job.state == JobState.PROCESSING:
                    job = await self._await_result(job)
                if job.state == JobState.REHOSTING:
                    # Ends the job, or sends it back to the line for the identity gate's retry.
                    retry = await self._rehost(job)
                    if retry is None:
                        return
                    job = retry
        except JobFailure as failure:
            await self._fail(job, str(failure))
        except JobMovedOn:
            log.info("job %s: already moved on elsewhere", job.id)
        except Exception:
            log.exception("job %s: unexpected error", job.id)
            await self._fail(job, N_("something went wrong on our side"))

    async def _submit(self, job: JobRecord) -> JobRecord:
        token = new_token() if self._webhook_base_url else None
        fields = {
            "webhook_token_hash": token_hash(token) if token else None,
            "submitted_at": datetime.now(UTC),
            "attempts": job.attempts + 1,
        }
        submitted = await self._transition(
            job.id,
            [JobState.QUEUED, JobState.SUBMITTED],
            JobState.SUBMITTED,
            **fields,
        )
        if submitted is None:
            raise JobMovedOn
        job = submitted
        self._note_webhook_token(job.id, submitted.webhook_token_hash)
        request = await self._request_for(job, token)
        result = await self._call_with_retries(job, lambda: self._backend.submit(request))
        return await self._record_result(job, result)

    async def _request_for(self, job: JobRecord, webhook_token: str | None) -> SubmitRequest:
        """What the generator is sent for a job, from the job's row and its stored inputs."""
        base = self._webhook_base_url
        params = GenerationParams.from_dict(job.params)
        if job.identity_retries:
            # The identity gate's retry: only the images still owed, with the attempt's seed.
            plan = await self._plan(job)
            params = replace(params, samples=max(1, len(plan.slots)), seed=plan.seed)
        return SubmitRequest(
            params=params,
            face_image=await self._input(job.selfie_key),
            pose_image=await self._input(job.pose_key) if job.pose_key else None,
            webhook_url=f"{base}/webhooks/modelslab/{webhook_token}" if webhook_token else None,
            track_id=job.id,
            face_key=job.selfie_key,
            pose_key=job.pose_key,
        )

    async def _await_result(self, job: JobRecord) -> JobRecord:
        assert job.provider_id is not None
        operation = GenerationParams.from_dict(job.params).operation
        provider_id = job.provider_id

        def fetch() -> Awaitable[ProviderResult]:
            return self._backend.fetch(operation, provider_id)

        nudge = self._nudges[job.id]
        deadline = self._deadline(job)
        delay = self._first_poll_delay(job)
        polls = 0
        while True:
            if time.monotonic() >= deadline:
                raise JobFailure(N_("it took too long: the generator did not finish in time"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    nudge.wait(), timeout=min(delay, deadline - time.monotonic())
                )
            nudge.clear()
            result = await self._call_with_retries(job, fetch)
            if result.status != ResultStatus.PROCESSING:
                return await self._record_result(job, result)
            if result.provider_id and result.provider_id != provider_id:
                job = await self._record_move(job, result)
                provider_id = result.provider_id
            polls += 1
            delay = self._next_poll_delay(result.eta_seconds, polls)

    async def _transition(
        self, job_id: str, expected: list[JobState], to: JobState, **fields: Any
    ) -> JobRecord | None:
        """A guarded transition, made only while this process still holds the job's lease."""
        await self._written(job_id)
        return await self._jobs.transition(job_id, expected, to, owner=self.lease.owner, **fields)

    async def _written(self, job_id: str) -> None:
        """Until the job's write still under way (see `_unwritten`) has ended; JobMovedOn if
        it found the job moved on."""
        unwritten = self._unwritten.pop(job_id, None)
        if unwritten is not None and await unwritten is None:
            raise JobMovedOn

    def _publish_if_written(self, write: asyncio.Task[JobRecord | None], event: JobEvent) -> None:
        if not write.cancelled() and write.exception() is None and write.result() is not None:
            self.relay.publish(event)

    async def _unwritten_ended(self, job_id: str) -> None:
        """Until the job's write still under way has ended, whatever its outcome: for a write
        that ends the job, guarded itself."""
        unwritten = self._unwritten.pop(job_id, None)
        if unwritten is not None:
            await asyncio.wait((unwritten,))
            _log_unwritten(job_id, unwritten)

    async def _record_move(self, job: JobRecord, result: ProviderResult) -> JobRecord:
        """The job goes by a new provider id (a fallback moved it to the other generator):
        recorded, so that after a restart it is fetched from where it now runs."""
        eta_at = datetime.now(UTC) + timedelta(seconds=result.eta_seconds or 0)
        moved = await self._transition(
            job.id,
            [JobState.PROCESSING],
            JobState.PROCESSING,
            provider_id=result.provider_id,
            eta_at=eta_at,
        )
        if moved is None:
            raise JobMovedOn
        log.info("job %s: now %s", job.id, result.provider_id)
        self.relay.publish(Started(job.id, result.eta_seconds))
        return moved

    async def _record_result(self, job: JobRecord, result: ProviderResult) -> JobRecord:
        """The job once the generator's answer is taken: processing, or rehosting with the
        answer (written, or to be written with the job's end: `_answer_waits_for_the_end`)."""
        now = datetime.now(UTC)
        if result.status == ResultStatus.FAILED:
            detail = f": {result.message}" if result.message else ""
            log.warning("job %s: provider reported failure%s", job.id, detail)
            self._metrics.provider_call("generation_failed")
            raise JobFailure(N_("the generator could not make this image"))
        if result.status == ResultStatus.PROCESSING:
            if not result.provider_id:
                raise JobFailure(N_("the generator gave no job id to follow"))
            eta_at = now + timedelta(seconds=result.eta_seconds or 0)
            # Written while the result is awaited (a webhook may come at once): the job's next
            # write waits for it, and a job found moved on stops there.
            await self._written(job.id)
            write = asyncio.create_task(
                self._jobs.transition(
                    job.id,
                    [JobState.SUBMITTED],
                    JobState.PROCESSING,
                    owner=self.lease.owner,
                    provider_id=result.provider_id,
                    eta_at=eta_at,
                )
            )
            started = Started(job.id, result.eta_seconds)
            write.add_done_callback(lambda done: self._publish_if_written(done, started))
            self._unwritten[job.id] = write
            return replace(
                job, state=JobState.PROCESSING, provider_id=result.provider_id, eta_at=eta_at
            )
        answered = replace(
            job,
            state=JobState.REHOSTING,
            provider_id=result.provider_id or job.provider_id,
            provider_outputs=tuple(result.outputs),
            completed_at=now,
            generation_time=result.generation_time,
        )
        self._note_provider_time(job, now)
        if self._answer_waits_for_the_end(job, answered):
            self.dispatcher.answered(job.id)  # its provider slot is free
            return answered
        moved = await self._transition(
            job.id,
            [JobState.SUBMITTED, JobState.PROCESSING],
            JobState.REHOSTING,
            provider_id=answered.provider_id,
            provider_outputs=list(result.outputs),
            completed_at=now,
            generation_time=result.generation_time,
        )
        if moved is None:
            raise JobMovedOn
        self.dispatcher.changed()  # its provider slot is free
        return moved

    def _answer_waits_for_the_end(self, job: JobRecord, answered: JobRecord) -> bool:
        """Whether a finished answer is written with the job's end rather than first (moving
        the job to rehosting), one write fewer. Until then the row says processing: a process
        that dies meanwhile leaves a job resumed by fetching the answer again. Its provider
        slot is free all the same: this process's dispatch passes count it no more
        (`Dispatcher.answered`), other processes' do until the end is written. So the answer
        is written first only when:
        - it answered the submit itself (the row does not say where to fetch it again, and a
          restart would submit again, paying the generator twice);
        - the identity gate measures the images (that takes long, and a gate retry starts
          from rehosting)."""
        refetchable = job.state == JobState.PROCESSING and answered.provider_id == job.provider_id
        return refetchable and self._identity is None

    def _note_provider_time(self, job: JobRecord, now: datetime) -> None:
        if job.submitted_at is not None:
            self._metrics.stage("provider", (now - job.submitted_at).total_seconds())

    async def _rehost(self, job: JobRecord) -> JobRecord | None:
        """Keep the attempt's images and end the job; through the identity gate, if there is
        one. None once the job has ended, or the job back in the line for the gate's retry."""
        self.relay.publish(Progress(job.id, "rehosting"))
        completed_at = job.completed_at or datetime.now(UTC)
        link_left = (
            completed_at + timedelta(seconds=self._timings.link_ttl_seconds) - datetime.now(UTC)
        )
        deadline = time.monotonic() + link_left.total_seconds()
        plan = await self._plan(job)
        urls = _outputs_for(plan, job.provider_outputs)
        started = time.monotonic()
        try:
            kept = await self._rehoster.rehost(job.id, urls, deadline=deadline)
        except RehostFailed as exc:
            await self._drop_images(job, list(exc.stored))
            raise JobFailure(str(exc)) from None  # its reason, marked with N_
        self._metrics.stage("rehost", time.monotonic() - started)
        # A generator that made fewer images than asked leaves the last slots empty.
        images = [
            replace(image, position=slot) for image, slot in zip(kept, plan.slots, strict=False)
        ]
        if self._identity is None:
            await self._ending(self._succeed(job, images))
            return None
        started = time.monotonic()
        measured = await self._identity.measure(job, images, plan)
        self._metrics.stage("identity", time.monotonic() - started)
        self._metrics.identity_checked(
            passed=sum(1 for image in measured if image.passed),
            failed=sum(1 for image in measured if image.failed),
            unjudged=sum(1 for image in measured if image.passed is None),
        )
        if self._identity.wants_retry(job, measured):
            retried = await self._jobs.retry_for_identity(job, measured, owner=self.lease.owner)
            if retried is None:
                raise JobMovedOn
            failed = sum(1 for image in measured if image.failed)
            log.info("job %s: %d image(s) failed the identity gate; retrying", job.id, failed)
            self._metrics.identity_retry()
            self.relay.publish(Progress(job.id, "identity_retry"))
            self.dispatcher.changed()  # its provider slot is free, and it waits again
            return retried
        await self._ending(self._succeed_measured(job, [*plan.kept, *measured], measured))
        return None

    async def _plan(self, job: JobRecord) -> AttemptPlan:
        return first_plan(job) if self._identity is None else await self._identity.plan(job)

    async def _succeed_measured(
        self, job: JobRecord, candidates: list[MeasuredImage], last: list[MeasuredImage]
    ) -> None:
        """End a job the identity gate measured: per image owed, one that passed or the
        closest; the images not delivered are deleted."""
        chosen = best_per_slot(candidates)
        outputs = [
            replace(image.as_output(), public_token=image.image.public_token or new_token())
            for image in chosen
        ]
        delivered = {out.content_key for out in outputs}
        unused = [c.image.content_key for c in candidates if c.image.content_key not in delivered]
        if await self._succeed(job, outputs, measured=last):
            await self._drop_images(job, unused)

    async def _succeed(
        self,
        job: JobRecord,
        outputs: list[OutputRecord],
        *,
        measured: list[MeasuredImage] | None = None,
    ) -> bool:
        await self._unwritten_ended(job.id)  # the end's own guard tells whether it stands
        keep_until = self._keep_inputs_until()
        answer = None
        if job.completed_at is not None:  # None: a gate retry failed, nothing was answered
            answer = GeneratorAnswer(job.provider_id, job.provider_outputs, job.completed_at)
        if not await self._jobs.succeed(
            job.id,
            outputs,
            generation_time=job.generation_time,
            keep_inputs_until=keep_until,
            owner=self.lease.owner,
            measured=measured or (),
            answer=answer,
        ):
            # It moved on while its images were kept. Ended (cancelled, failed elsewhere): what
            # was stored for it goes, unless another job holds the same image. Taken over by
            # another process: that one may be storing these very images (the store is
            # content-addressed), so they stay.
            current = await self._jobs.get(job.id)
            if current is None or current.state.finished:
                await self._drop_images(job, [out.content_key for out in outputs])
            return False
        self._metrics.job_ended(
            operation=job.operation,
            backend=generator_name(self._backend, job.provider_id),
            outcome="succeeded",
            committed=len(outputs),
            released=job.credits_reserved - len(outputs),
            refunded=sum(1 for out in outputs if out.identity_passed is False),
        )
        if keep_until is None:
            await self._drop_inputs(job)
        self.relay.publish(completed_event(job, outputs, self._image_base_url))
        return True

    async def _fail(self, job: JobRecord, reason: str) -> None:
        if job.identity_retries and await self._deliver_kept(job, reason):
            return
        await self._ending(self._record_failure(job, reason))

    async def _deliver_kept(self, job: JobRecord, reason: str) -> bool:
        """A gate retry failed at the generator: the images earlier attempts made are still
        better than nothing, so the job ends with them (those that failed the gate with the
        note, and refunded). False when there are none to deliver."""
        kept = await self._jobs.kept_images(job.id)
        if not kept:
            return False
        moved = await self._transition(
            job.id,
            [JobState.SUBMITTED, JobState.PROCESSING, JobState.REHOSTING],
            JobState.REHOSTING,
        )
        if moved is None:
            return False
        log.info(
            "job %s: its gate retry failed (%s); delivering earlier images",
            job.id,
            reasons.english(reason),
        )
        self.dispatcher.changed()
        await self._ending(self._succeed_measured(moved, kept, []))
        return True

    async def _record_failure(self, job: JobRecord, reason: str) -> None:
        await self._unwritten_ended(job.id)
        keep_until = self._keep_inputs_until()
        kept = await self._jobs.kept_images(job.id) if job.identity_retries else []
        refunded = await self._jobs.fail(
            job.id, reason, keep_inputs_until=keep_until, owner=self.lease.owner
        )
        if refunded:
            self._metrics.job_ended(
                operation=job.operation,
                backend=generator_name(self._backend, job.provider_id),
                outcome="failed",
                released=job.credits_reserved,
            )
            if keep_until is None:
                await self._drop_inputs(job)
            await self._drop_images(job, [image.image.content_key for image in kept])
            retry = keep_until is not None
            self.relay.publish(Failed(job.id, reason, refunded=True, can_retry=retry))
            log.info("job %s failed: %s", job.id, reasons.english(reason))

    async def _ending(self, step: Coroutine[Any, Any, None]) -> None:
        """Run the step that ends a job (commit, delete the selfie, tell the user) through, even
        when the job's task is cancelled: a stop landing between the commit and the delete
        would leave the selfie behind. `stop` waits for these steps."""
        task = asyncio.create_task(step)
        self._endings.add(task)
        task.add_done_callback(self._endings.discard)
        await asyncio.shield(task)

    # ---- helpers ------------------------------------------------------------------------

    async def _call_with_retries(
        self, job: JobRecord, call: Callable[[], Awaitable[ProviderResult]]
    ) -> ProviderResult:
        """Run a provider call; a busy or unreachable provider is retried, bounded in rounds."""
        unreachable: ProviderUnreachable | None = None
        for round_ in range(self._timings.busy_retry_rounds):
            try:
                return await call()
            except RateLimited as exc:
                unreachable = None
                wait = exc.retry_after + random.uniform(0, 1)
            except ProviderUnreachable as exc:
                if not exc.retryable:  # asked to give up at once: say where it tried
                    raise JobFailure(N_("the generator cannot be reached"), exc.message) from None
                unreachable = exc
                wait = self._timings.retry.delay(round_ + 2)
            except (AuthenticationFailed, InsufficientCredits, PlanRestricted) as exc:
                log.error("job %s: provider refused the account: %s", job.id, exc)
                raise JobFailure(
                    N_("the image service is misconfigured; an admin must fix it")
                ) from None
            except InvalidRequest as exc:
                raise JobFailure(N_("the generator refused the request"), str(exc)) from None
            except UnknownProviderJob:
                raise JobFailure(N_("the generator lost track of this job")) from None
            except BackendError as exc:
                if not exc.retryable:
                    raise JobFailure(N_("the generator failed"), str(exc)) from None
                unreachable = None
                wait = self._timings.retry.delay(round_ + 2)
            log.info("job %s: provider busy, retrying in %.1f s", job.id, wait)
            self.relay.publish(
                Progress(job.id, "retrying" if unreachable is None else "unreachable")
            )
            await asyncio.sleep(wait)
        if unreachable is not None:
            log.error("job %s: %s", job.id, unreachable)
            raise JobFailure(
                N_("the generator cannot be reached right now; try again in a few minutes")
            )
        raise JobFailure(N_("the generator is unavailable right now; try again in a few minutes"))

    async def _input(self, key: str | None) -> bytes:
        if key is None:
            raise JobFailure(N_("the selfie for this job is missing"))
        try:
            return await self._store.get(key)
        except ImageNotFound:
            raise JobFailure(N_("the selfie for this job is missing")) from None

    async def _drop_inputs(self, job: JobRecord) -> None:
        """Delete an ended job's selfie and pose image. The job has ended already, so a store
        that fails here changes nothing for the user: the start-up sweep deletes it later."""
        try:
            await drop_inputs(self._store, job.selfie_key, job.pose_key)
        except Exception:
            log.exception("job %s: deleting its selfie failed; the next start will", job.id)

    async def _drop_images(self, job: JobRecord, keys: list[str]) -> None:
        """Delete generated images the job will not deliver (the identity gate's others, or
        those stored before another of the attempt's outputs failed), unless a job uses them."""
        if not keys:
            return
        try:
            for key in await self._jobs.unused_images(keys):
                await self._store.delete(key)
        except Exception:
            log.exception("job %s: deleting its undelivered images failed", job.id)

    async def sweep_inputs(self) -> None:
        """Delete stored selfies no job needs: those whose re-roll window has passed, and
        orphans (a crash between a job's end and the delete, or a refused request's)."""
        await self.sweep_expired_inputs()
        await self._sweep_orphan_inputs()

    async def _sweep_orphan_inputs(self) -> None:
        """Delete stored selfies that no job points at. A selfie is stored just before its job
        is inserted: only those written ORPHAN_GRACE ago or more are looked at, so one whose
        job is being inserted right now is never taken for an orphan. The keys are listed
        before the jobs are read, so a job committed in between is seen."""
        written_before = datetime.now(UTC) - ORPHAN_GRACE
        old = await self._store.keys(prefix=INPUT_PREFIX, written_before=written_before)
        if not old:
            return
        needed = await self._jobs.referenced_input_keys()
        for key in old:
            if key not in needed:
                await self._store.delete(key)

    async def _sweep_unfinished_writes(self) -> None:
        """At start: delete the temporary files of image writes that a process killed in the
        middle of one left (a decode worker killed at its time limit, the service itself)."""
        try:
            swept = await self._store.sweep_unfinished(
                written_before=datetime.now(UTC) - ORPHAN_GRACE
            )
        except Exception:
            log.exception("sweeping unfinished image writes failed; the next start will")
            return
        if swept:
            log.info("deleted %d unfinished image write(s)", swept)

    def _keep_inputs_until(self) -> datetime | None:
        """Until when a finished job keeps its selfie, so that it can be re-rolled."""
        return datetime.now(UTC) + self._input_retention if self._input_retention else None

    async def sweep_expired_inputs(self) -> int:
        """Delete kept selfies whose re-roll window has passed; how many jobs had some."""
        expired = await self._jobs.expired_inputs(datetime.now(UTC))
        for job_id, keys in expired:
            await drop_inputs(self._store, *keys)
            await self._jobs.clear_inputs(job_id)
        return len(expired)

    async def _sweep_periodically(self) -> None:
        """Sweep now and then. With several replicas, the one holding the sweep's lock does."""
        while True:
            await asyncio.sleep(self._timings.input_sweep_seconds)
            try:
                if await self._coordination.try_lock(SWEEP_LOCK):
                    await self.sweep_inputs()
            except Exception:
                log.exception("sweeping expired selfies failed; trying again later")

    def _deadline(self, job: JobRecord) -> float:
        since = job.submitted_at or job.created_at
        left = since + timedelta(seconds=self._timings.job_timeout_seconds) - datetime.now(UTC)
        return time.monotonic() + left.total_seconds()

    def _first_poll_delay(self, job: JobRecord) -> float:
        if job.eta_at is None:
            return self._timings.min_poll_seconds
        until_eta = (job.eta_at - datetime.now(UTC)).total_seconds()
        return self._clamp_poll(until_eta)

    def _next_poll_delay(self, eta_seconds: float | None, polls: int) -> float:
        backoff = self._timings.min_poll_seconds * 2 ** min(polls, 10)
        return self._clamp_poll(eta_seconds if eta_seconds else backoff)

    def _clamp_poll(self, seconds: float) -> float:
        return min(self._timings.max_poll_seconds, max(self._timings.min_poll_seconds, seconds))

    async def typical_generation_seconds(self) -> float:
        """The median time the provider took on the most recent jobs (any process's), worked
        out at most every `event_check_seconds`."""
        now = time.monotonic()
        if self._typical is not None and now - self._typical[1] < self._timings.event_check_seconds:
            return self._typical[0]
        recent = await self._dispatch_queue.recent_generation_seconds()
        seconds = statistics.median(recent) if recent else DEFAULT_GENERATION_SECONDS
        self._typical = (seconds, now)
        return seconds

    async def queue_events(self, job_ids: list[str]) -> dict[str, Queued]:
        """Where waiting jobs stand, with an ETA from recent generation times."""
        positions = await self.dispatcher.positions(job_ids)
        if not positions:
            return {}
        typical = await self.typical_generation_seconds()
        return {job_id: self._queued(job_id, p, typical) for job_id, p in positions.items()}

    async def queue_event(self, job_id: str) -> Queued | None:
        position = await self.dispatcher.position(job_id)
        if position is None:
            return None
        return self._queued(job_id, position, await self.typical_generation_seconds())

    def _queued(self, job_id: str, position: int, typical: float) -> Queued:
        # It starts once the jobs ahead have gone through the provider's slots, then runs.
        # No slot at all (no GPU worker alive yet) counts as one: it is waited for.
        rounds = (position - 1) // max(1, self.dispatcher.capacity) + 2
        return Queued(job_id, position, typical * rounds)

    async def current_event(self, job: JobRecord) -> JobEvent | None:
        """Where an unfinished job stands now, for someone who starts following it late."""
        if job.state == JobState.PROCESSING:
            eta = (job.eta_at - datetime.now(UTC)).total_seconds() if job.eta_at else None
            return Started(job.id, max(0.0, eta) if eta is not None else None)
        if job.state == JobState.REHOSTING:
            return Progress(job.id, "rehosting")
        return await self.queue_event(job.id)

    def _positions_changed(self) -> None:
        # A long queue changes at every dispatch: tell people at most every ANNOUNCE_SECONDS,
        # so that the cost stays one pass over the watchers per interval, not per change.
        if self._announcement is None and not self._stopping and self._events.watched_jobs:
            # It serves every job: none of its lines is the job whose change started it.
            self._announcement = asyncio.create_task(
                self._announce_positions(), context=outside_job()
            )

    async def _announce_positions(self) -> None:
        try:
            await asyncio.sleep(ANNOUNCE_SECONDS)
            self._announcement = None
            # Only watched jobs are told; everyone else learns their place when they ask. Each
            # process tells its own followers (the line is the same from every process).
            watched = self._events.watched_jobs
            self._announced = {j: p for j, p in self._announced.items() if j in watched}
            events = await self.queue_events(watched)
            for job_id, event in events.items():
                if self._announced.get(job_id) != event.position:
                    self._announced[job_id] = event.position
                    self._events.publish(event)
        except Exception:
            self._announcement = None
            log.exception("telling followers where their jobs stand failed")


INPUT_PREFIX = "inputs/"


def _outputs_for(plan: AttemptPlan, outputs: Sequence[str]) -> tuple[str, ...]:
    """The outputs an attempt keeps: more than paid for are never fetched, since only what was
    asked for is delivered."""
    return tuple(outputs[: len(plan.slots)])


def _log_unwritten(job_id: str, write: asyncio.Task[JobRecord | None]) -> None:
    if not write.cancelled() and (error := write.exception()) is not None:
        log.warning("job %s: its move to processing was not written (%r)", job_id, error)


async def drop_inputs(store: ImageStore, *keys: str | None) -> None:
    """Delete a job's stored selfie and pose image: they are kept only while the job needs them."""
    for key in keys:
        if key:
            await store.delete(key)
