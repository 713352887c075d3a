"""Turns storage records into the plain data adapters render."""

from __future__ import annotations

from collections.abc import Iterable

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
