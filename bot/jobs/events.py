"""What happens to a job, as plain data with its user-facing text written here and only here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.replies import unlike_note
from bot.ui import Button, ImageRef, JobSummary, job_buttons
from bot.views import image_refs, job_summary
from storage.records import JobRecord, OutputRecord

__all__ = [
    "FINAL_EVENTS",
    "Completed",
    "Failed",
    "ImageRef",
    "JobEvent",
    "Progress",
    "Queued",
    "Started",
    "completed_event",
]


def eta_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f", about {max(1, round(seconds))} s"
    return f", about {round(seconds / 60)} min"


@dataclass(frozen=True)
class Queued:
    job_id: str
    position: int
    eta_seconds: float | None

    @property
    def text(self) -> str:
        ahead = self.position - 1
        if ahead == 0:
            return f"Queued: you're next{eta_text(self.eta_seconds)}."
        jobs = "job" if ahead == 1 else "jobs"
        eta = eta_text(self.eta_seconds)
        return f"Queued: position {self.position} ({ahead} {jobs} ahead){eta}."


@dataclass(frozen=True)
class Started:
    job_id: str
    eta_seconds: float | None

    @property
    def text(self) -> str:
        return f"Generating your image{eta_text(self.eta_seconds)}…"


@dataclass(frozen=True)
class Progress:
    job_id: str
    stage: str

    @property
    def text(self) -> str:
        return {
            "rehosting": "Almost there: saving your images…",
            "identity_retry": "That didn't look enough like you: making it again…",
            "retrying": "The generator is busy; trying again shortly…",
            "unreachable": "The generator cannot be reached; trying again shortly…",
        }.get(self.stage, f"{self.stage}…")


@dataclass(frozen=True)
class Completed:
    job_id: str
    images: tuple[ImageRef, ...]
    job: JobSummary
    refunded: int = 0
    # Delivered images that failed the identity gate on every attempt: refunded.
    unlike: int = 0

    @property
    def seed(self) -> int | None:
        return self.job.seed

    @property
    def text(self) -> str:
        count = len(self.images)
        noun = "image" if count == 1 else "images"
        style = f" · {self.job.style}" if self.job.style else ""
        note = f" {self.refunded} unused credit(s) returned." if self.refunded else ""
        return (
            f"Done: {count} {noun}{style} · seed {self.job.seed} · job {self.job.short_id}."
            f"{note}{' ' + unlike_note(self.unlike, count) if self.unlike else ''}"
        )

    @property
    def buttons(self) -> tuple[Button, ...]:
        return job_buttons(self.job_id)


@dataclass(frozen=True)
class Failed:
    job_id: str
    reason: str
    refunded: bool
    # The selfie is still kept, so the same job can be tried again with one press.
    can_retry: bool = False

    @property
    def text(self) -> str:
        refund = " Your credits were returned." if self.refunded else ""
        again = " Press Try again to retry." if self.can_retry else ""
        return f"Sorry, that didn't work: {self.reason}.{refund}{again}"

    @property
    def buttons(self) -> tuple[Button, ...]:
        return (Button("Try again", "reroll", {"job": self.job_id}),) if self.can_retry else ()


def completed_event(
    job: JobRecord, outputs: Sequence[OutputRecord], image_base_url: str
) -> Completed:
    """A succeeded job's final event, from its record and its outputs."""
    return Completed(
        job.id,
        image_refs(outputs, image_base_url),
        job_summary(job),
        refunded=job.credits_reserved - len(outputs),
        unlike=sum(1 for out in outputs if out.identity_passed is False),
    )


JobEvent = Queued | Started | Progress | Completed | Failed
FINAL_EVENTS = (Completed, Failed)
