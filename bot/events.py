"""What happens to a job, as plain data with its user-facing text written here and only here."""

from __future__ import annotations

from dataclasses import dataclass


def _eta(seconds: float | None) -> str:
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
        return f"Queued: position {self.position}{_eta(self.eta_seconds)}."


@dataclass(frozen=True)
class Started:
    job_id: str
    eta_seconds: float | None

    @property
    def text(self) -> str:
        return f"Generating your image{_eta(self.eta_seconds)}…"


@dataclass(frozen=True)
class Progress:
    job_id: str
    stage: str

    @property
    def text(self) -> str:
        return {
            "rehosting": "Almost there: saving your images…",
            "retrying": "The generator is busy; trying again shortly…",
        }.get(self.stage, f"{self.stage}…")


@dataclass(frozen=True)
class ImageRef:
    url: str
    content_key: str
    content_type: str
    width: int
    height: int


@dataclass(frozen=True)
class Completed:
    job_id: str
    images: tuple[ImageRef, ...]
    seed: int | None
    refunded: int = 0

    @property
    def text(self) -> str:
        count = len(self.images)
        noun = "image" if count == 1 else "images"
        note = f" {self.refunded} unused credit(s) returned." if self.refunded else ""
        return f"Done: {count} {noun} (seed {self.seed}).{note}"


@dataclass(frozen=True)
class Failed:
    job_id: str
    reason: str
    refunded: bool

    @property
    def text(self) -> str:
        refund = " Your credits were returned." if self.refunded else ""
        return f"Sorry, that didn't work: {self.reason}.{refund}"


JobEvent = Queued | Started | Progress | Completed | Failed
FINAL_EVENTS = (Completed, Failed)
