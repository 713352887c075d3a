"""The values a metric's label may take. Anything else is counted as "other": a label value
never comes from what a user typed, so a hostile prompt or style cannot create series."""

from __future__ import annotations

from backends.modelslab.client import CALL_ERRORS

OTHER = "other"

OPERATIONS = ("headshot", "facegen", "avatar", "flux_headshot")
BACKENDS = ("modelslab", "local")
OUTCOMES = ("succeeded", "failed")
STAGES = ("queue_wait", "provider", "rehost", "identity")
PLATFORMS = ("discord", "telegram", "terminal")
# A provider error: how a call to ModelsLab went wrong, or a generation it reported failed.
PROVIDER_ERRORS = (*CALL_ERRORS, "generation_failed")
CREDIT_MOVES = ("reserved", "committed", "released", "refunded")
IDENTITY_RESULTS = ("passed", "failed", "unjudged")
WORKER_STATES = ("live", "draining", "silent")


def pick(value: str | None, allowed: tuple[str, ...]) -> str:
    """`value` if it is one of `allowed`, else "other"."""
    return value if value in allowed else OTHER
