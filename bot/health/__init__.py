"""Liveness, readiness, and the generator's state (bot/health/provider.py)."""

from __future__ import annotations

from bot.health.provider import ProviderHealth
from bot.health.readiness import Readiness, ReadinessReport

__all__ = ["ProviderHealth", "Readiness", "ReadinessReport"]
