"""How long to wait before trying a ModelsLab call again."""

from __future__ import annotations

import random
from dataclasses import dataclass

# 2**62 seconds is already absurd; bounding the exponent keeps the float maths from overflowing.
_MAX_EXPONENT = 62


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded full-jitter exponential backoff, and `retry_after` with a little jitter.

    `max_attempts` counts every try, the first included: 4 means at most 3 waits.
    """

    max_attempts: int = 4
    base: float = 0.5
    cap: float = 20.0
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        for name in ("base", "cap", "max_retry_after"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be zero or more")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """The wait after failed try number `attempt` (0 for the first)."""
        ceiling = min(self.cap, self.base * 2 ** min(attempt, _MAX_EXPONENT))
        return rng.uniform(0.0, ceiling)

    def rate_limit_wait(
        self, attempt: int, retry_after: float | None, rng: random.Random
    ) -> float | None:
        """The wait after a rate limit, or None when the provider asks for longer than we hold a
        caller: then the caller gets `RateLimited` at once and reschedules the work itself."""
        if retry_after is None:
            return self.backoff(attempt, rng)
        if retry_after > self.max_retry_after:
            return None
        # The jitter spreads out workers that were all told the same retry_after.
        return retry_after + rng.uniform(0.0, min(self.cap, self.base))
