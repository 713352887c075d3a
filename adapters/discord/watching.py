"""What the service counts of its Discord traffic that discord.py does not report: a message
sent is counted where the adapter sends it (discord.py sends an interaction's messages through
its webhook adapter and the rest through its HTTP client, with no hook in either), and a wait
on a 429 where discord.py says so, in its log."""

from __future__ import annotations

import logging

from bot.metrics import Metrics

PLATFORM = "discord"
# discord.py's HTTP client and its webhook adapter (an interaction's answers): their words.
_LOGGERS = ("discord.http", "discord.webhook.async_")
_RATE_LIMITED = (
    "We are being rate limited",
    "Global rate limit has been hit",
    "Webhook ID %s is rate limited",
)


class RateLimitWatch(logging.Filter):
    """Counts the waits discord.py logs on a 429 ("…Retrying in 1.25 seconds."). It filters
    nothing out."""

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self._metrics = metrics

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith(_RATE_LIMITED):
            args = record.args if isinstance(record.args, tuple) else ()
            numbers = [arg for arg in args if isinstance(arg, float)]
            self._metrics.rate_limit_wait(PLATFORM, numbers[-1] if numbers else 0.0)
        return True

    def install(self) -> None:
        for name in _LOGGERS:
            logging.getLogger(name).addFilter(self)

    def remove(self) -> None:
        for name in _LOGGERS:
            logging.getLogger(name).removeFilter(self)
