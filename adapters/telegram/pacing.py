"""Telegram's flood limits, shared among the replicas.

Telegram counts what the bot sends, whichever replica sends it: about 30 messages a second
overall and 20 a minute in one group. Each replica paces itself at its static share, the
limits divided by the replicas alive now, counted again every `SHARE_CHECK_SECONDS`. A group's
messages may come from any replica (its updates reach any of them), so its limit is shared too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from telegram.constants import FloodLimit
from telegram.ext import AIORateLimiter, BaseRateLimiter

from bot.commands import CommandLayer

log = logging.getLogger(__name__)

SHARE_CHECK_SECONDS = 30.0
OVERALL_PER_SECOND: float = FloodLimit.MESSAGES_PER_SECOND
GROUP_PER_MINUTE: float = FloodLimit.MESSAGES_PER_MINUTE_PER_GROUP

Answer = bool | dict[str, Any] | list[dict[str, Any]]


class SharedRateLimiter(BaseRateLimiter[int]):
    """python-telegram-bot's AIORateLimiter at this replica's share of Telegram's limits. A
    new share takes a new limiter: what waits in the old one goes at the old pace, and the new
    one starts with its share's burst (Telegram's answer to an overshoot, a flood-control wait,
    is waited out and the request made again)."""

    def __init__(self, *, max_retries: int = 3) -> None:
        self._max_retries = max_retries
        self.replicas = 1
        self._limiter = self._made()

    @property
    def overall_per_second(self) -> float:
        """Messages a second this replica may send, all chats together."""
        return OVERALL_PER_SECOND / self.replicas

    @property
    def group_per_minute(self) -> float:
        """Messages a minute this replica may send to one group."""
        return GROUP_PER_MINUTE / self.replicas

    def share(self, replicas: int) -> None:
        """Pace at 1/`replicas` of Telegram's limits from now on."""
        replicas = max(1, replicas)
        if replicas != self.replicas:
            log.info("Telegram's flood limits are shared by %d replicas now", replicas)
            self.replicas = replicas
            self._limiter = self._made()

    def _made(self) -> AIORateLimiter:
        overall, second = _at_least_one(self.overall_per_second, 1.0)
        group, minute = _at_least_one(self.group_per_minute, 60.0)
        return AIORateLimiter(
            overall_max_rate=overall,
            overall_time_period=second,
            group_max_rate=group,
            group_time_period=minute,
            max_retries=self._max_retries,
        )

    async def initialize(self) -> None:
        await self._limiter.initialize()

    async def shutdown(self) -> None:
        await self._limiter.shutdown()

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, Answer]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: int | None,
    ) -> Answer:
        return await self._limiter.process_request(
            callback, args, kwargs, endpoint, data, rate_limit_args
        )


def _at_least_one(count: float, period: float) -> tuple[float, float]:
    """`count` messages per `period` as a rate whose burst is at least one message (a limiter
    never lets through more than its burst at once): the period stretched instead."""
    if count >= 1:
        return count, period
    return 1.0, period / count


async def take_share(layer: CommandLayer, *shared: Callable[[int], None]) -> None:
    """Count the replicas, and set each pace in `shared` to its share."""
    replicas = await layer.replicas()
    for share in shared:
        share(replicas)


async def keep_taking_share(layer: CommandLayer, *shared: Callable[[int], None]) -> None:
    """Count the replicas again now and then, for as long as the adapter runs."""
    while True:
        await asyncio.sleep(SHARE_CHECK_SECONDS)
        try:
            await take_share(layer, *shared)
        except Exception:
            log.exception("counting the replicas failed; the shares stay as they were")
