"""Turns storage records into the plain data adapters render."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from bot.ui import ImageRef, JobSummary
from storage.records import JobRecord, OutputRecord


def job_summary(job: JobRecord) -> JobSummary:
    return JobSummary(
        id=job.id,
        operation=job.operation,
        state=str(job.state),
        style=job.style,
        prompt=job.user_prompt,
        seed=job.seed,
        created_at=job.created_at,
        error=job.error,
    )


def image_refs(outputs: Iterable[OutputRecord], image_base_url: str) -> tuple[ImageRef, ...]:
    """Our own links to re-hosted outputs: never the provider's."""
    base = image_base_url.rstrip("/")
    return tuple(
        ImageRef(
            url=f"{base}/images/{out.public_token}",
            content_key=out.content_key,
            content_type=out.content_type,
            width=out.width,
            height=out.height,
            job_id=out.job_id,
        )
        for out in outputs
    )


@dataclass(frozen=True)
class Likeness:
    """How much a job's images looked like its selfie, by the identity gate's measure.

    `images`: (image number, counted from 1; dlib's distance from the selfie's face, None when
    the image showed no face; whether it passed), for the images the gate measured.
    `threshold`: the distance at or under which two faces are taken for the same person.
    """

    images: tuple[tuple[int, float | None, bool], ...]
    threshold: float


def likeness(outputs: Sequence[OutputRecord], threshold: float) -> Likeness | None:
    """The identity gate's measures of these outputs (in the order they are shown); None when
    it measured none of them (it was off, or the selfie showed no face to compare with)."""
    measured = tuple(
        (number, out.identity_distance, bool(out.identity_passed))
        for number, out in enumerate(outputs, start=1)
        if out.identity_distance is not None or out.identity_passed is False
    )
    return Likeness(measured, threshold) if measured else None
