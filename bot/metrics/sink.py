"""What the service reports as it works: one interface, two implementations chosen at start-up.

`Metrics` itself records nothing (METRICS=0); `PrometheusMetrics` (bot/metrics/prometheus.py)
keeps Prometheus series. Callers never ask which one they hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class WorkerFigures:
    """One GPU worker, as its heartbeat row (or the child process) reports it."""

    name: str
    state: str  # live, draining, silent
    jobs_done: int
    jobs_failed: int
    seconds_per_image: float | None
    heartbeat_age: float | None


@dataclass(frozen=True)
class ServiceFigures:
    """What a scrape reads at that moment rather than counts as it happens (NaN: could not be
    read, the database being out of reach)."""

    queue_depth: float
    active_jobs: float
    slots_used: float
    slots_cap: float
    provider_degraded: bool
    workers: tuple[WorkerFigures, ...] = field(default=())

    @classmethod
    def unreadable(cls, active_jobs: int, provider_degraded: bool) -> ServiceFigures:
        nan = float("nan")
        return cls(nan, active_jobs, nan, nan, provider_degraded)


class Metrics:
    """The service's figures. This base records nothing: it is what runs with METRICS=0."""

    enabled = False

    # ---- jobs -------------------------------------------------------------------------

    def job_created(self, operation: str, credits: int) -> None:
        """A job was queued, holding `credits` reserved."""

    def job_ended(
        self,
        *,
        operation: str,
        backend: str,
        outcome: str,
        committed: int = 0,
        released: int = 0,
        refunded: int = 0,
    ) -> None:
        """A job ended (succeeded or failed) and settled its credits."""

    def stage(self, stage: str, seconds: float) -> None:
        """One stage of a job took `seconds`: queue_wait, provider, rehost, identity."""

    def credits_refunded(self, credits: int) -> None:
        """A moderator gave back a finished job's credits."""

    # ---- the generator ----------------------------------------------------------------

    def provider_call(self, outcome: str) -> None:
        """One call to the generator's API ended: "ok" or the kind of error."""

    def identity_checked(self, *, passed: int, failed: int, unjudged: int) -> None:
        """The identity gate measured an attempt's images."""

    def identity_retry(self) -> None:
        """The identity gate sent a job back to be made again."""

    # ---- chat platforms ---------------------------------------------------------------

    def received(self, platform: str) -> None:
        """An interaction (Discord) or an update (Telegram) arrived."""

    def acknowledged(self, platform: str, seconds: float) -> None:
        """A request was acknowledged `seconds` after it arrived."""

    def sent(self, platform: str, messages: int = 1) -> None:
        """Messages sent, edited or uploaded to the platform."""

    def rate_limit_wait(self, platform: str, seconds: float) -> None:
        """The platform's rate limit held a request back for `seconds`."""

    def delivered(self, platform: str, seconds: float) -> None:
        """A finished job's result reached the platform `seconds` after the job ended."""

    # ---- scrapes ----------------------------------------------------------------------

    def exposition(self, figures: ServiceFigures) -> bytes:
        """The text a scrape is answered with."""
        return b""
