"""The identity gate: every generated image is measured against the selfie before delivery.

An image whose face is too far from the selfie's (dlib's distance over IDENTITY_THRESHOLD), or
that has no face, is made again: the job goes back to the fair line for a new provider attempt
that asks only for the images that failed, with a new seed. After IDENTITY_RETRIES such
attempts, each image the job owes is the first that passed, or else the closest one, delivered
with a note and its credit refunded. The user pays for delivered images only; the retries are
the operator's.

Face work runs in the face toolkit's worker processes, never in the event loop. The embeddings
live only inside one `compare` call: what is kept is the distance.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from backends.params import MAX_SEED
from bot.faces import FaceToolkit, IdentityScore
from storage.identity import MeasuredImage
from storage.imagestore import ImageNotFound, ImageStore
from storage.jobs import JobRepository
from storage.records import JobRecord, OutputRecord

log = logging.getLogger(__name__)

# Seeds of later attempts step through the seed space by a large odd number, so each attempt
# differs from the first and from the others, and a restart sends the same one again.
RETRY_SEED_STEP = 0x9E3779B1


def retry_seed(seed: int | None, retry: int) -> int | None:
    """The seed of a job's `retry`-th gate retry (0: the job's own seed)."""
    if seed is None:
        return None
    return (seed + retry * RETRY_SEED_STEP) % (MAX_SEED + 1)


@dataclass(frozen=True)
class AttemptPlan:
    """What one provider attempt of a job makes: which of its images (slots), with which seed,
    and the images earlier attempts made and the gate measured."""

    attempt: int
    slots: tuple[int, ...]
    seed: int | None
    kept: tuple[MeasuredImage, ...] = ()


def first_plan(job: JobRecord) -> AttemptPlan:
    """A job's first attempt: all its images, with its own seed."""
    return AttemptPlan(0, tuple(range(job.credits_reserved)), job.seed)


class IdentityGate:
    def __init__(
        self,
        faces: FaceToolkit,
        *,
        store: ImageStore,
        jobs: JobRepository,
        retries: int,
        generator_of: Callable[[str | None], str],
    ) -> None:
        self._faces = faces
        self._store = store
        self._jobs = jobs
        self.retries = retries
        self._generator_of = generator_of

    async def plan(self, job: JobRecord) -> AttemptPlan:
        """The attempt the job is at: after a gate retry, only the images that failed and have
        not passed since (an image the generator never made is not asked for again)."""
        if job.identity_retries == 0:
            return first_plan(job)
        kept = tuple(await self._jobs.kept_images(job.id))
        passed = {image.slot for image in kept if not image.failed}
        slots = tuple(sorted({image.slot for image in kept if image.failed} - passed))
        return AttemptPlan(
            job.identity_retries, slots, retry_seed(job.seed, job.identity_retries), kept
        )

    async def measure(
        self, job: JobRecord, images: Sequence[OutputRecord], plan: AttemptPlan
    ) -> list[MeasuredImage]:
        """Each re-hosted image of this attempt, measured against the job's selfie."""
        selfie = await self._read(job.selfie_key)
        outputs = [await self._store.get(image.content_key) for image in images]
        scores: list[IdentityScore | None] = [None] * len(images)
        if selfie is None:
            log.warning("job %s: its selfie is gone; its images go unjudged", job.id)
        else:
            try:
                scores = list(await self._faces.compare(selfie, outputs))
            except Exception as exc:
                # Our checker failed, not the images: they are delivered unjudged rather than
                # lost (and the job paid for as usual).
                log.error("job %s: the identity gate could not measure (%r)", job.id, exc)
        generator = self._generator_of(job.provider_id)
        measured = []
        for image, score in zip(images, scores, strict=True):
            measured.append(
                MeasuredImage(
                    image=image,
                    attempt=plan.attempt,
                    operation=job.operation,
                    backend=generator,
                    distance=score.distance if score else None,
                    passed=score.passed if score else None,
                    seconds=score.seconds if score else 0.0,
                )
            )
        return measured

    def wants_retry(self, job: JobRecord, measured: Sequence[MeasuredImage]) -> bool:
        return job.identity_retries < self.retries and any(m.failed for m in measured)

    async def _read(self, key: str | None) -> bytes | None:
        if key is None:
            return None
        try:
            return await self._store.get(key)
        except ImageNotFound:
            return None
