"""Turns a platform-neutral generation request into a queued job, or refuses it with one message.

Everything that can refuse a request runs before a credit moves: options are checked against
the documented limits, the selfie is sanitised and its face checked (one face, big enough: a
generator bills for a selfie it cannot use), and only then is the job inserted together with
its credit reservation in one transaction, which also finds the user's row (or makes it, on
first sight) and the community's.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from backends.params import MAX_SEED, GenerationParams, ParameterError
from bot import replies
from bot.faces import FacesBusy, FaceToolkit, SelfieVerdict
from bot.i18n import _, duration, language_now
from bot.images import ImageRejected, image_workers
from bot.jobs.engine import INPUT_PREFIX, JobEngine, drop_inputs
from bot.metrics import Metrics
from bot.tokens import new_job_id
from storage.imagestore import ImageStore
from storage.jobs import JobRepository, NewJob, TooManyActive
from storage.ledger import QuotaExceeded
from storage.records import JobRecord, PlatformCommunity, PlatformUser

log = logging.getLogger(__name__)


class RequestRefused(Exception):
    """The request was refused before anything was reserved. The message is for the user."""


class RequestRepeated(Exception):
    """The request (its request key) queued `job_id` before, when it was first handled: that
    job stands, and nothing new was queued or reserved."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"the request queued job {job_id} before")
        self.job_id = job_id


@dataclass(frozen=True)
class GenerationRequest:
    platform: str
    platform_user_id: str
    operation: str
    options: Mapping[str, Any]
    selfie: bytes
    pose_image: bytes | None = None
    platform_community_id: str | None = None
    # The operator (the local CLI user) is not metered by the daily quota.
    metered: bool = True
    # The daily allowance that applies to this user here (None: the configured default).
    daily_quota: int | None = None
    # At most this many of the user's jobs may be waiting or running (None: no limit).
    max_active: int | None = None
    # For the user's history: the style preset and the user's own words, before composition.
    style: str | None = None
    user_prompt: str | None = None
    # The images come from our own store (a re-roll): sanitised once already, not re-encoded.
    images_sanitised: bool = False
    # Where the platform's adapter will show the result (its own address, no secrets): noted
    # with the job in one transaction, so that no queued job is ever without one.
    deliver_to: Mapping[str, Any] | None = None
    # The platform's key for the request (see `CommandRequest.request_key`).
    request_key: str | None = None


class GenerationService:
    def __init__(
        self,
        *,
        jobs: JobRepository,
        store: ImageStore,
        engine: JobEngine,
        daily_quota: int,
        max_upload_bytes: int,
        faces: FaceToolkit | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._faces = faces
        self._metrics = metrics or Metrics()
        self._jobs = jobs
        self._store = store
        self._engine = engine
        self._daily_quota = daily_quota
        self._max_upload_bytes = max_upload_bytes

    async def request(self, req: GenerationRequest) -> JobRecord:
        """Queue the job and return it; RequestRefused (nothing changed) if it cannot be done,
        RequestRepeated if this request queued a job before."""
        params = self._params(req)
        job_id = new_job_id()
        selfie_key = f"{INPUT_PREFIX}{job_id}.jpg"
        pose_key = f"{INPUT_PREFIX}{job_id}-pose.jpg" if req.pose_image else None
        await self._keep_inputs(req, selfie_key, pose_key)
        new_job = NewJob(
            id=job_id,
            # Found, or made on first sight, in the job's own transaction.
            user=PlatformUser(req.platform, req.platform_user_id),
            community=PlatformCommunity(req.platform, req.platform_community_id)
            if req.platform_community_id
            else None,
            operation=str(params.operation),
            params=params.to_dict(),
            credits=params.samples,
            selfie_key=selfie_key,
            pose_key=pose_key,
            seed=params.seed,
            style=req.style,
            user_prompt=req.user_prompt,
            # Shown in the asker's language, whichever process shows it.
            delivery=(req.platform, req.deliver_to, language_now())
            if req.deliver_to is not None
            else None,
            request_key=req.request_key,
        )
        quota = self._daily_quota if req.daily_quota is None else req.daily_quota
        today = datetime.now(UTC).date()
        try:
            job = await self._jobs.create(
                new_job,
                daily_quota=quota if req.metered else None,
                today=today,
                max_active=req.max_active,
                lease=self._engine.lease,
            )
        except BaseException as exc:
            await drop_inputs(self._store, selfie_key, pose_key)
            if isinstance(exc, QuotaExceeded):
                message = replies.quota_exceeded(exc.requested, exc.allowance, until_reset())
                raise RequestRefused(message) from None
            if isinstance(exc, TooManyActive):
                raise RequestRefused(replies.too_many_in_progress(exc.active)) from None
            raise
        if job.id != job_id:
            # Its first handling queued it: whoever drives it and shows its result goes on.
            await drop_inputs(self._store, selfie_key, pose_key)
            raise RequestRepeated(job.id)
        self._metrics.job_created(job.operation, job.credits_reserved)
        self._engine.start(job)
        return job

    def _params(self, req: GenerationRequest) -> GenerationParams:
        options = dict(req.options)
        if options.get("seed") is None:
            # Every job gets a seed, so a result can always be reproduced or re-rolled.
            options["seed"] = secrets.randbelow(MAX_SEED + 1)
        try:
            return GenerationParams.create(req.operation, **options)
        except ParameterError as exc:
            # What the generator's own limits refuse that the options' checks let through (a
            # list's items): the limit is the generator's words, in English.
            raise RequestRefused(_("Not accepted: {limit}.", limit=str(exc))) from None

    async def _check_face(self, selfie: bytes) -> None:
        if self._faces is None:
            return
        try:
            check = await self._faces.check_selfie(selfie)
        except FacesBusy:
            raise RequestRefused(replies.faces_busy()) from None
        except Exception as exc:
            # Sanitised just now, so a failure here is ours, not the user's: nothing was
            # reserved yet, and they may simply try again.
            log.error("the face check failed on a sanitised selfie (%r)", exc)
            raise RequestRefused(replies.face_check_failed()) from None
        if check.verdict == SelfieVerdict.NO_FACE:
            raise RequestRefused(replies.no_face())
        if check.verdict == SelfieVerdict.SEVERAL:
            raise RequestRefused(replies.several_faces())
        if check.verdict == SelfieVerdict.TOO_SMALL:
            raise RequestRefused(
                replies.face_too_small(check.face_px or 0, self._faces.rules.min_face_px)
            )

    async def _keep_inputs(
        self, req: GenerationRequest, selfie_key: str, pose_key: str | None
    ) -> None:
        """Store the selfie and the pose image at their keys: sanitised on the way (a
        re-roll's were, when first sent) and the selfie's face checked. A refusal leaves
        nothing stored."""
        if req.images_sanitised:
            await self._store.put(req.selfie, content_type="image/jpeg", key=selfie_key)
            if req.pose_image is not None and pose_key is not None:
                await self._store.put(req.pose_image, content_type="image/jpeg", key=pose_key)
            return
        kept: list[str] = []
        try:
            selfie = await self._sanitise(req.selfie, "selfie", selfie_key)
            kept.append(selfie_key)
            if req.pose_image is not None and pose_key is not None:
                await self._sanitise(req.pose_image, "pose image", pose_key)
                kept.append(pose_key)
            await self._check_face(selfie)
        except BaseException:
            await drop_inputs(self._store, *kept)
            raise

    async def _sanitise(self, data: bytes, what: str, key: str) -> bytes:
        """The upload sanitised and stored at `key`; RequestRefused if it is not acceptable."""
        try:
            image = await image_workers().sanitise_into(
                self._store, key, data, max_bytes=self._max_upload_bytes, subject=what
            )
        except ImageRejected as exc:
            if what == "selfie":
                raise RequestRefused(exc.shown()) from None
            raise RequestRefused(_("Pose image: {reason}", reason=exc.shown())) from None
        return image.data


def until_reset(now: datetime | None = None) -> str:
    """Time left until the daily allowance resets (00:00 UTC), in the language being written
    in: "5 hr 12 min" in English."""
    now = now or datetime.now(UTC)
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    return duration((midnight - now).total_seconds())
