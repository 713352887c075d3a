"""A decode worker's process: `python -m bot.images.decoder FD BUDGET`.

It answers one call at a time over the connection on FD until that closes. The service kills
it when a call overruns its time limit (see `bot.images.workers`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from multiprocessing.connection import Connection

from bot.images.errors import OUT_OF_MEMORY, ImageRejected
from bot.images.sanitise import heic_supported, warm_up
from bot.images.wire import receive_call

_MB = 1024 * 1024


def serve(conn: Connection, memory_budget: int) -> None:
    # Ctrl-C reaches the whole process group: the service stops its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Below the service in CPU priority: on a small host the decodes take what the event loop
    # (serving /images, the database, webhooks) leaves.
    with contextlib.suppress(OSError):
        os.nice(10)
    _single_threaded_codecs()
    warm_up()
    _limit_address_space(memory_budget)
    conn.send(("ready", None))
    while True:
        try:
            fn, args, kwargs = receive_call(conn)
        except (EOFError, OSError):
            return
        try:
            reply: tuple[str, object] = ("ok", fn(*args, **kwargs))
        except ImageRejected as exc:
            reply = ("error", exc)
        except MemoryError:
            reply = ("error", ImageRejected(OUT_OF_MEMORY, reason="too_costly"))
        except Exception as exc:  # a bug of ours: the service logs it with the job
            reply = ("error", RuntimeError(f"image work failed: {type(exc).__name__}: {exc}"))
        try:
            conn.send(reply)
        except OSError:
            return


def _single_threaded_codecs() -> None:
    heic_supported()  # registers the HEIF opener before the first call
    try:
        import pillow_heif

        pillow_heif.options.DECODE_THREADS = 1
    except (ImportError, AttributeError):
        pass


def _limit_address_space(memory_budget: int) -> None:
    """Cap the address space at what the process maps now plus twice the budget: a decode
    the estimate let through but that grows past it fails with MemoryError."""
    try:
        import resource

        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmSize:"))
        mapped = int(line.split()[1]) * 1024
        limit = mapped + 2 * memory_budget + 256 * _MB
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, OSError, StopIteration, ValueError):
        pass  # not Linux: the budget estimate and the time limit still hold


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])), int(sys.argv[2]))
