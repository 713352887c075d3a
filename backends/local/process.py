"""The GPU worker process's entry point, light to import: the bot's process names it as the
spawn target, and only the child imports the worker (numpy, torch, diffusers)."""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import Connection

from backends.local.config import WorkerConfig

# The worker needs none of the bot's secrets: they leave its environment before anything loads.
SECRET_VARIABLES = (
    "MODELSLAB_API_KEY",
    "DISCORD_TOKEN",
    "TELEGRAM_BOT_TOKEN",
    "S3_ACCESS_KEY_ID",
    "S3_SECRET_ACCESS_KEY",
)


def main(conn: Connection, config: WorkerConfig) -> None:
    # Ctrl-C reaches the whole process group: the bot stops the worker itself, between jobs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)
    from backends.local.worker import serve

    serve(conn, config)
