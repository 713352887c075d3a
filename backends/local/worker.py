"""The GPU worker on a pipe (one machine): one process that owns the GPU, keeps the pipelines
resident (`backends.local.core`) and runs one job at a time. The bot talks to it over a pipe
(`backends.local.backend.LocalBackend`).

Messages to the worker: ("job", job_id, params dict, face bytes, pose bytes or None), ("stop",).
Messages from it: ("ready", operations), ("failed", reason) at start, then per job
("done", job_id, [PNG bytes], seconds), ("refused", job_id, reason) for a request the pipeline
cannot serve (no face, an unsupported option), ("error", job_id, reason) for anything else.
Reasons are our own words: tracebacks go to the worker's log only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from backends.errors import InvalidRequest
from backends.local.components import MissingComponent
from backends.local.config import WorkerConfig
from backends.local.core import WorkerCore, quiet_libraries

log = logging.getLogger("headshot_bot.gpu_worker")


def serve(conn: Connection, config: WorkerConfig) -> None:
    """The worker process's life: load, warm up, then run jobs until told to stop."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s gpu-worker %(message)s")
    quiet_libraries()
    core = WorkerCore(config)
    try:
        operations = core.load()
    except MissingComponent as exc:
        conn.send(("failed", exc.message))
        return
    except Exception as exc:
        log.exception("the GPU worker could not start")
        conn.send(("failed", f"the GPU worker could not load its models ({type(exc).__name__})"))
        return
    conn.send(("ready", [str(op) for op in operations]))
    inbox: queue.Queue[tuple[Any, ...] | None] = queue.Queue()
    # A reader thread drains the pipe while a job runs, so that the bot's sends never block.
    threading.Thread(target=_read, args=(conn, inbox), daemon=True).start()
    while (message := inbox.get()) is not None and message[0] == "job":
        _, job_id, params, face, pose = message
        started = time.monotonic()
        try:
            outputs = core.run(params, face, pose)
        except InvalidRequest as exc:
            conn.send(("refused", job_id, exc.message))
        except Exception as exc:
            log.exception("job %s failed", job_id)
            conn.send(("error", job_id, core.reason(exc)))
        else:
            conn.send(("done", job_id, outputs, time.monotonic() - started))
        del message, face, pose  # the selfie is kept only while its job runs


def _read(conn: Connection, inbox: queue.Queue[tuple[Any, ...] | None]) -> None:
    try:
        while (message := conn.recv())[0] != "stop":
            inbox.put(message)
    except (EOFError, OSError):
        pass
    # Stopping: the jobs not started yet are dropped (the bot fails and refunds them).
    while True:
        try:
            inbox.get_nowait()
        except queue.Empty:
            break
    inbox.put(None)
