"""Logging set-up with a filter that blanks every known secret, whatever logged it. Lines are
plain text for a person at a terminal, or one JSON object each (LOG_FORMAT=json) for a log
shipper, labelled with the job they concern (`bot.log_context`) and the replica."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal, TextIO

from bot.log_context import JobContext, current_job, show_platform

REDACTED = "[redacted]"
LogFormat = Literal["plain", "json"]
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class SecretFilter(logging.Filter):
    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= 4]

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


class JobFilter(logging.Filter):
    """Notes on each record the job its line concerns, where and when it is logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.job = current_job()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (ISO 8601, UTC), level, logger, message, replica; the
    job's job_id, operation and platform where the line concerns one; the exception in `exc`.
    Every value is redacted once more, whatever put a secret in it."""

    def __init__(self, replica: str, secrets: SecretFilter | None = None) -> None:
        super().__init__()
        self._replica = replica
        self._secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        fields = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "replica": self._replica,
        }
        job: JobContext | None = getattr(record, "job", None)
        if job is not None:
            fields["job_id"] = job.job_id
            if job.operation:
                fields["operation"] = job.operation
            if job.platform:
                fields["platform"] = job.platform
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            fields["exc"] = record.exc_text
        if record.stack_info:
            fields["stack"] = self.formatStack(record.stack_info)
        if self._secrets is not None:
            fields = {name: self._secrets.redact(value) for name, value in fields.items()}
        return json.dumps(fields)


def setup_logging(
    level: str,
    secrets: Iterable[str],
    *,
    log_format: LogFormat = "plain",
    replica: str | None = None,
    stream: TextIO | None = None,
) -> None:
    """Log to `stream` (stderr) from `level` up, in `log_format`; `replica` names this process
    in JSON lines (the host name when None)."""
    handler = logging.StreamHandler(stream)
    secret_filter = SecretFilter(secrets)
    handler.addFilter(secret_filter)
    show_platform(log_format == "json")
    if log_format == "json":
        handler.addFilter(JobFilter())
        handler.setFormatter(JsonFormatter(replica or socket.gethostname(), secret_filter))
    else:
        handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "aiohttp.access", "aiosqlite", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # discord.py logs whole gateway payloads and webhook URLs at DEBUG: both carry interaction
    # tokens, which are secrets for 15 minutes.
    logging.getLogger("discord").setLevel(max(logging.INFO, root.level))
    # python-telegram-bot logs every request's parameters at DEBUG (a webhook's secret among
    # them), and httpx every URL, which carries the bot token (held above as well).
    logging.getLogger("telegram").setLevel(max(logging.INFO, root.level))
