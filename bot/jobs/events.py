"""What happens to a job, as plain data with its user-facing text written here and only here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bot.i18n import N_, _, duration, ngettext, number
from bot.jobs.reasons import shown
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


def _eta(seconds: float) -> str:
    """A wait, rounded: to the second under a minute, else to the minute."""
    if seconds < 60:
        return duration(max(1, round(seconds)))
    return duration(60 * round(seconds / 60))


@dataclass(frozen=True)
class Queued:
    job_id: str
    position: int
    eta_seconds: float | None

    @property
    def text(self) -> str:
        ahead = self.position - 1
        if self.eta_seconds is None:
            if ahead == 0:
                return _("Queued: you're next.")
            return ngettext(
                "Queued: position {position} ({count} job ahead).",
                "Queued: position {position} ({count} jobs ahead).",
                ahead,
                position=number(self.position),
            )
        eta = _eta(self.eta_seconds)
        if ahead == 0:
            return _("Queued: you're next, about {time}.", time=eta)
        return ngettext(
            "Queued: position {position} ({count} job ahead), about {time}.",
            "Queued: position {position} ({count} jobs ahead), about {time}.",
            ahead,
            position=number(self.position),
            time=eta,
        )


@dataclass(frozen=True)
class Started:
    job_id: str
    eta_seconds: float | None

    @property
    def text(self) -> str:
        if self.eta_seconds is None:
            return _("Generating your image…")
        return _("Generating your image, about {time}…", time=_eta(self.eta_seconds))


# What each stage of a job says while it runs (an unknown stage reads as its name).
_STAGES = {
    "rehosting": N_("Almost there: saving your images…"),
    "identity_retry": N_("That didn't look enough like you: making it again…"),
    "retrying": N_("The generator is busy; trying again shortly…"),
    "unreachable": N_("The generator cannot be reached; trying again shortly…"),
}


@dataclass(frozen=True)
class Progress:
    job_id: str
    stage: str

    @property
    def text(self) -> str:
        if self.stage in _STAGES:
            return _(_STAGES[self.stage])
        return f"{self.stage}…"


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
        if self.job.style:
            done = ngettext(
                "Done: {count} image · {style} · seed {seed} · job {job}.",
                "Done: {count} images · {style} · seed {seed} · job {job}.",
                count,
                style=self.job.style,
                seed=self.job.seed,
                job=self.job.short_id,
            )
        else:
            done = ngettext(
                "Done: {count} image · seed {seed} · job {job}.",
                "Done: {count} images · seed {seed} · job {job}.",
                count,
                seed=self.job.seed,
                job=self.job.short_id,
            )
        texts = [done]
        if self.refunded:
            texts.append(
                ngettext(
                    "{count} unused credit returned.",
                    "{count} unused credits returned.",
                    self.refunded,
                )
            )
        if self.unlike:
            texts.append(unlike_note(self.unlike, count))
        return " ".join(texts)

    @property
    def buttons(self) -> tuple[Button, ...]:
        return job_buttons(self.job_id)


@dataclass(frozen=True)
class Failed:
    job_id: str
    # As stored in jobs.error (`bot.jobs.reasons`): shown in the language being written in.
    reason: str
    refunded: bool
    # The selfie is still kept, so the same job can be tried again with one press.
    can_retry: bool = False

    @property
    def text(self) -> str:
        texts = [_("Sorry, that didn't work: {reason}.", reason=shown(self.reason))]
        if self.refunded:
            texts.append(_("Your credits were returned."))
        if self.can_retry:
            texts.append(_("Press {button} to retry.", button=_try_again()))
        return " ".join(texts)

    @property
    def buttons(self) -> tuple[Button, ...]:
        if not self.can_retry:
            return ()
        return (Button(_try_again(), "reroll", {"job": self.job_id}),)


def _try_again() -> str:
    """The retry button's label, which the failure's text names too."""
    return _("Try again")


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
