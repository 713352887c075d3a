"""The Prometheus implementation of `Metrics`: one registry per service (the tests start many
in one process), every label value taken from a closed list (bot/metrics/labels.py)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from bot.metrics import labels
from bot.metrics.labels import pick
from bot.metrics.sink import Metrics, ServiceFigures

# A `_created` series per counter doubles what a scrape carries, and nothing here reads them.
disable_created_metrics()

# Seconds. A stage runs from a few milliseconds (re-hosting a stored image) to minutes (a
# provider's queue); an acknowledgement must stay under Discord's 3 s.
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
CHAT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 10, 30)
# A fleet far larger than this is not one a single dashboard shows by worker.
MAX_WORKER_SERIES = 64


class PrometheusMetrics(Metrics):
    enabled = True

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)

        def counter(name: str, doc: str, names: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, names, registry=registry)

        def gauge(name: str, doc: str, names: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, names, registry=registry)

        self._jobs_queued = counter(
            "headshot_jobs_queued", "Jobs queued, by operation.", ("operation",)
        )
        self._jobs = counter(
            "headshot_jobs",
            "Jobs ended, by operation, the generator that ran them, and outcome.",
            ("operation", "backend", "outcome"),
        )
        self._stages = Histogram(
            "headshot_job_stage_seconds",
            "Time in each stage of a job: queue_wait (for a provider slot), provider "
            "(submitted to result), rehost (keeping the outputs), identity (the gate's check).",
            ("stage",),
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self._credits = counter(
            "headshot_credits",
            "Credits moved: reserved by a new job, committed for delivered images, released "
            "(reserved, never charged), refunded (charged, then given back).",
            ("movement",),
        )
        self._provider_calls = counter(
            "headshot_provider_calls", "Calls to the generator's API that ended well."
        )
        self._provider_errors = counter(
            "headshot_provider_errors",
            "Generator errors by kind (each try of a retried call counts).",
            ("kind",),
        )
        self._identity = counter(
            "headshot_identity_checks",
            "Images the identity gate measured, by result.",
            ("result",),
        )
        self._identity_retries = counter(
            "headshot_identity_retries", "Jobs the identity gate sent back to be made again."
        )
        self._received = counter(
            "headshot_chat_received",
            "Interactions (Discord) and updates (Telegram) received.",
            ("platform",),
        )
        self._sent = counter(
            "headshot_chat_messages_sent",
            "Messages sent, edited or uploaded, by platform.",
            ("platform",),
        )
        self._rate_limited = counter(
            "headshot_chat_rate_limit_waits",
            "Requests the platform's rate limit held back.",
            ("platform",),
        )
        self._rate_limit_seconds = counter(
            "headshot_chat_rate_limit_wait_seconds",
            "Time requests waited for the platform's rate limit.",
            ("platform",),
        )
        self._acknowledgements = Histogram(
            "headshot_chat_acknowledgement_seconds",
            "From a request's arrival to its acknowledgement, by platform.",
            ("platform",),
            buckets=CHAT_BUCKETS,
            registry=registry,
        )
        self._deliveries = Histogram(
            "headshot_chat_delivery_seconds",
            "From a job's end to its result sent, by platform.",
            ("platform",),
            buckets=CHAT_BUCKETS,
            registry=registry,
        )
        self._queue_depth = gauge(
            "headshot_queue_depth", "Jobs waiting for a provider slot (every replica's)."
        )
        self._active = gauge("headshot_active_jobs", "Unfinished jobs this replica drives.")
        self._slots_used = gauge("headshot_provider_slots_used", "Provider slots in use.")
        self._slots_cap = gauge("headshot_provider_slots_cap", "Provider slots in all.")
        self._degraded = gauge(
            "headshot_provider_degraded",
            "1 while the generator fails every call (an outage), else 0.",
        )
        self._workers = gauge("headshot_gpu_workers", "GPU workers, by state.", ("state",))
        self._worker_seconds = gauge(
            "headshot_gpu_worker_seconds_per_image",
            "Each GPU worker's recent median seconds per image.",
            ("worker",),
        )
        self._worker_jobs = gauge(
            "headshot_gpu_worker_jobs",
            "Jobs each GPU worker has run since it started, by outcome.",
            ("worker", "outcome"),
        )
        self._worker_age = gauge(
            "headshot_gpu_worker_heartbeat_age_seconds",
            "Seconds since each GPU worker's last heartbeat.",
            ("worker",),
        )
        self._initialise_series()

    def _initialise_series(self) -> None:
        """Every series a dashboard reads exists from the start, at 0: a rate over a counter
        that appears only at its first error reads nothing rather than 0."""
        for operation in labels.OPERATIONS:
            self._jobs_queued.labels(operation)
            for backend in labels.BACKENDS:
                for outcome in labels.OUTCOMES:
                    self._jobs.labels(operation, backend, outcome)
        for stage in labels.STAGES:
            self._stages.labels(stage)
        for movement in labels.CREDIT_MOVES:
            self._credits.labels(movement)
        for kind in labels.PROVIDER_ERRORS:
            self._provider_errors.labels(kind)
        for result in labels.IDENTITY_RESULTS:
            self._identity.labels(result)
        for platform in labels.PLATFORMS:
            for family in (self._received, self._sent, self._rate_limited):
                family.labels(platform)
            self._rate_limit_seconds.labels(platform)
            self._acknowledgements.labels(platform)
            self._deliveries.labels(platform)
        for state in labels.WORKER_STATES:
            self._workers.labels(state)

    # ---- jobs -------------------------------------------------------------------------

    def job_created(self, operation: str, credits: int) -> None:
        self._jobs_queued.labels(pick(operation, labels.OPERATIONS)).inc()
        self._credits.labels("reserved").inc(credits)

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
        self._jobs.labels(
            pick(operation, labels.OPERATIONS),
            pick(backend, labels.BACKENDS),
            pick(outcome, labels.OUTCOMES),
        ).inc()
        for movement, credits in (
            ("committed", committed),
            ("released", released),
            ("refunded", refunded),
        ):
            if credits:
                self._credits.labels(movement).inc(credits)

    def stage(self, stage: str, seconds: float) -> None:
        self._stages.labels(pick(stage, labels.STAGES)).observe(max(0.0, seconds))

    def credits_refunded(self, credits: int) -> None:
        self._credits.labels("refunded").inc(credits)

    # ---- the generator ----------------------------------------------------------------

    def provider_call(self, outcome: str) -> None:
        if outcome == "ok":
            self._provider_calls.inc()
        else:
            self._provider_errors.labels(pick(outcome, labels.PROVIDER_ERRORS)).inc()

    def identity_checked(self, *, passed: int, failed: int, unjudged: int) -> None:
        for result, count in (("passed", passed), ("failed", failed), ("unjudged", unjudged)):
            if count:
                self._identity.labels(result).inc(count)

    def identity_retry(self) -> None:
        self._identity_retries.inc()

    # ---- chat platforms ---------------------------------------------------------------

    def received(self, platform: str) -> None:
        self._received.labels(pick(platform, labels.PLATFORMS)).inc()

    def acknowledged(self, platform: str, seconds: float) -> None:
        self._acknowledgements.labels(pick(platform, labels.PLATFORMS)).observe(max(0.0, seconds))

    def sent(self, platform: str, messages: int = 1) -> None:
        self._sent.labels(pick(platform, labels.PLATFORMS)).inc(messages)

    def rate_limit_wait(self, platform: str, seconds: float) -> None:
        platform = pick(platform, labels.PLATFORMS)
        self._rate_limited.labels(platform).inc()
        self._rate_limit_seconds.labels(platform).inc(max(0.0, seconds))

    def delivered(self, platform: str, seconds: float) -> None:
        self._deliveries.labels(pick(platform, labels.PLATFORMS)).observe(max(0.0, seconds))

    # ---- scrapes ----------------------------------------------------------------------

    def exposition(self, figures: ServiceFigures) -> bytes:
        self._queue_depth.set(figures.queue_depth)
        self._active.set(figures.active_jobs)
        self._slots_used.set(figures.slots_used)
        self._slots_cap.set(figures.slots_cap)
        self._degraded.set(1 if figures.provider_degraded else 0)
        states = dict.fromkeys(labels.WORKER_STATES, 0)
        for family in (self._worker_seconds, self._worker_jobs, self._worker_age):
            family.clear()
        for worker in figures.workers[:MAX_WORKER_SERIES]:
            state = pick(worker.state, labels.WORKER_STATES)
            states[state] = states.get(state, 0) + 1
            if worker.seconds_per_image is not None:
                self._worker_seconds.labels(worker.name).set(worker.seconds_per_image)
            self._worker_jobs.labels(worker.name, "done").set(worker.jobs_done)
            self._worker_jobs.labels(worker.name, "failed").set(worker.jobs_failed)
            if worker.heartbeat_age is not None:
                self._worker_age.labels(worker.name).set(worker.heartbeat_age)
        for state, count in states.items():
            self._workers.labels(state).set(count)
        return generate_latest(self.registry)
