"""Alive and ready. Alive: the process answers (`/healthz`). Ready (`/readyz`): the database
can be written, and every chat gateway this replica runs is connected. The generator's state is
shown but never makes a replica unready (see bot/health/provider.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bot.health.provider import ProviderHealth

log = logging.getLogger(__name__)

DATABASE_SECONDS = 5.0

GatewayCheck = Callable[[], bool]


@dataclass(frozen=True)
class ReadinessReport:
    ready: bool
    body: dict[str, object] = field(default_factory=dict)


class Readiness:
    def __init__(
        self,
        *,
        database_writable: Callable[[], Awaitable[None]],
        provider: ProviderHealth,
        fleet_live: Callable[[], Awaitable[bool | None]] | None = None,
    ) -> None:
        """`database_writable` raises when the database cannot be written. `fleet_live`: whether
        any GPU worker is live (None: this bot has none)."""
        self._database_writable = database_writable
        self._provider = provider
        self._fleet_live = fleet_live
        self._gateways: dict[str, GatewayCheck] = {}

    def gateway(self, name: str, is_up: GatewayCheck) -> None:
        """A chat gateway this replica runs (registered by its adapter as it starts)."""
        self._gateways[name] = is_up

    def drop_gateway(self, name: str) -> None:
        self._gateways.pop(name, None)

    async def check(self) -> ReadinessReport:
        database = await self._database()
        gateways = {name: "up" if is_up() else "down" for name, is_up in self._gateways.items()}
        generator = self._provider.describe()
        if self._fleet_live is not None and await self._fleet_live() is False:
            generator = {"state": "degraded", "reason": "no live GPU worker"}
        ready = database == "writable" and all(state == "up" for state in gateways.values())
        body: dict[str, object] = {
            "ready": ready,
            "database": database,
            "gateways": gateways,
            "generator": generator,
        }
        return ReadinessReport(ready, body)

    async def _database(self) -> str:
        try:
            async with asyncio.timeout(DATABASE_SECONDS):
                await self._database_writable()
        except TimeoutError:
            log.warning("readiness: the database did not answer in %.0f s", DATABASE_SECONDS)
            return "unreachable"
        except Exception as exc:
            log.warning("readiness: the database cannot be written (%s)", type(exc).__name__)
            return "not writable"
        return "writable"
