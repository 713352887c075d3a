"""The service's logging set-up (`headshot-bot run`'s) written into a buffer, and checks of what
it wrote: JSON lines that parse, and no secret in them, however it is spelled."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from bot.logs import LogFormat, setup_logging

# The loggers setup_logging quiets: set back as they were afterwards.
QUIETED = ("httpx", "httpcore", "aiohttp.access", "aiosqlite", "alembic", "discord", "telegram")


@contextlib.contextmanager
def service_logging(
    level: str,
    secrets: Iterable[str],
    *,
    log_format: LogFormat = "plain",
    replica: str | None = None,
) -> Iterator[io.StringIO]:
    """Logging as `headshot-bot run` sets it up, into the buffer yielded; as it was after."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, {n: logging.getLogger(n).level for n in QUIETED})
    buffer = io.StringIO()
    setup_logging(level, secrets, log_format=log_format, replica=replica, stream=buffer)
    try:
        yield buffer
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level_before in saved[2].items():
            logging.getLogger(name).setLevel(level_before)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of `text`, each of which must be one JSON object."""
    entries = []
    for line in text.splitlines():
        entry = json.loads(line)
        assert isinstance(entry, dict), line
        entries.append(entry)
    return entries


def assert_secret_absent(text: str, secret: str, *, json_format: bool) -> None:
    """Not in the text as written, nor as JSON escapes it, nor in any value it decodes to."""
    assert secret not in text
    if not json_format:
        return
    assert json.dumps(secret)[1:-1] not in text
    for entry in json_lines(text):
        for value in entry.values():
            assert secret not in str(value), entry
