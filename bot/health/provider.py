"""Whether the generator is in an outage, from the outcome of every call made to it.

A replica whose generator is down is "degraded", never "not ready": taking every replica out of
the load balancer during a ModelsLab outage would also stop Telegram's webhooks and the answers
people get while they wait.
"""

from __future__ import annotations

import time

from bot.metrics import Metrics

# Outcomes that mean the generator cannot do any work at all. A rate limit is a busy provider,
# a refused request a bad one: neither is an outage.
OUTAGE = frozenset({"unreachable", "timeout", "server_error", "bad_answer", "refused_key"})
# This many outage outcomes in a row, with no call going well between them.
OUTAGE_AFTER = 3


class ProviderHealth:
    """Fed every provider call's outcome ("ok" or an error kind); counts it in the metrics."""

    def __init__(self, metrics: Metrics, *, outage_after: int = OUTAGE_AFTER) -> None:
        self._metrics = metrics
        self._outage_after = outage_after
        self._failing = 0
        self._last_error: str | None = None
        self._since: float | None = None  # when the run of failures began (time.time)

    def record(self, outcome: str) -> None:
        self._metrics.provider_call(outcome)
        if outcome == "ok":
            self._failing, self._last_error, self._since = 0, None, None
        elif outcome in OUTAGE:
            if self._failing == 0:
                self._since = time.time()
            self._failing += 1
            self._last_error = outcome

    @property
    def degraded(self) -> bool:
        return self._failing >= self._outage_after

    def describe(self) -> dict[str, object]:
        """For /readyz's body."""
        if not self.degraded:
            return {"state": "ok"}
        return {
            "state": "degraded",
            "reason": self._last_error,
            "failed_calls": self._failing,
            "since": None if self._since is None else round(self._since),
        }
