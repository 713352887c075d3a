"""What the service counts of the requests the bot makes to Telegram: every Bot API call goes
through the application's rate limiter, so this wraps whichever limiter paces them."""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

from telegram.ext import BaseRateLimiter

from adapters.telegram.delivery import PLATFORM
from bot.metrics import Metrics

Answer = bool | dict[str, Any] | list[dict[str, Any]]
# A request held back longer than this was waiting for the limiter, not for the event loop.
WAIT_NOTICED_SECONDS = 0.005


def sends_a_message(endpoint: str) -> bool:
    """A call that posts or changes a message (sendMessage, sendPhoto, editMessageText…); not
    sendChatAction ("typing…"), which shows nothing that stays."""
    return (endpoint.startswith("send") and endpoint != "sendChatAction") or endpoint.startswith(
        "editMessage"
    )


class CountedRequests(BaseRateLimiter[Any]):
    """Counts each message sent and each wait for the pace of `paced`, and defers the rest to
    it (its pace, its retries after a flood-control answer)."""

    def __init__(self, paced: BaseRateLimiter[Any], metrics: Metrics) -> None:
        self._paced = paced
        self._metrics = metrics

    async def initialize(self) -> None:
        await self._paced.initialize()

    async def shutdown(self) -> None:
        await self._paced.shutdown()

    async def process_request(
        self,
        callback: Callable[..., Coroutine[Any, Any, Answer]],
        args: Any,
        kwargs: dict[str, Any],
        endpoint: str,
        data: dict[str, Any],
        rate_limit_args: Any,
    ) -> Answer:
        asked = time.monotonic()
        calling = 0.0  # time inside Telegram's own calls (a retry makes more than one)

        async def timed(*call_args: Any, **call_kwargs: Any) -> Answer:
            nonlocal calling
            started = time.monotonic()
            try:
                return await callback(*call_args, **call_kwargs)
            finally:
                calling += time.monotonic() - started

        try:
            answer = await self._paced.process_request(
                timed, args, kwargs, endpoint, data, rate_limit_args
            )
        finally:
            waited = time.monotonic() - asked - calling
            if waited > WAIT_NOTICED_SECONDS:
                self._metrics.rate_limit_wait(PLATFORM, waited)
        if sends_a_message(endpoint):
            self._metrics.sent(PLATFORM)
        return answer
