"""The GPU worker process's entry point, light to import: the bot's process names it as the
spawn target, and only the child imports the worker (numpy, torch, diffusers)."""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import Connection

from backends.local.config import WorkerConfig

# No GPU worker needs the chat tokens or the provider's key; the fleet's gpu-worker writes to
# the image store itself, the child on a pipe does not. They leave its environment before
# anything loads.
CHAT_AND_PROVIDER_SECRETS = ("MODELSLAB_API_KEY", "DISCORD_TOKEN", "TELEGRAM_BOT_TOKEN")
SECRET_VARIABLES = (*CHAT_AND_PROVIDER_SECRETS, "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY")


def main(conn: Connection, config: WorkerConfig) -> None:
    # Ctrl-C reaches the whole process group: the bot stops the worker itself, between jobs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for name in SECRET_VARIABLES:
        os.environ.pop(name, None)
    from backends.local.worker import serve

    serve(conn, config)
