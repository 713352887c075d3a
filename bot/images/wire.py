"""How a call travels to a decode worker: pickled, with large byte strings (the image) sent
beside the pickle rather than copied into it, so that the service's thread holds the GIL only
for the small part while a 10 MiB upload goes down the pipe."""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["receive_call", "receive_result", "send_call"]

# All a worker may send back: a hostile file could take over a worker, and what it sends must
# not take over the service. Plain values (bytes, str, numbers, tuples) need no class.
_RESULT_CLASSES = frozenset(
    {
        ("bot.images.sanitise", "SanitisedImage"),
        ("bot.images.sanitise", "ImageInfo"),
        ("bot.images.errors", "_rebuild"),
        # A refusal's untranslated message (`_rebuild` checks what they hold).
        ("bot.images.errors", "Phrase"),
        ("bot.images.errors", "Figure"),
        ("builtins", "RuntimeError"),
    }
)

_BESIDE = 64 * 1024  # byte strings from this size travel beside the pickle


def send_call(
    conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    wrapped = tuple(
        pickle.PickleBuffer(arg)
        if isinstance(arg, bytes | bytearray) and len(arg) >= _BESIDE
        else arg
        for arg in args
    )
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps((fn, wrapped, kwargs), protocol=5, buffer_callback=buffers.append)
    conn.send_bytes(len(buffers).to_bytes(4, "big") + header)
    for buffer in buffers:
        conn.send_bytes(buffer.raw())


def receive_call(conn: Connection) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    first = conn.recv_bytes()
    buffers = [conn.recv_bytes() for _buffer in range(int.from_bytes(first[:4], "big"))]
    fn, args, kwargs = pickle.loads(first[4:], buffers=buffers)  # noqa: S301 (our own service)
    return fn, args, kwargs


def receive_result(conn: Connection) -> tuple[str, Any]:
    """A worker's ("ok" | "error" | "ready", value), unpickled with only the classes above."""
    return _ResultUnpickler(io.BytesIO(conn.recv_bytes())).load()  # type: ignore[no-any-return]


class _ResultUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _RESULT_CLASSES:
            raise pickle.UnpicklingError(f"a decode worker sent {module}.{name}")
        return super().find_class(module, name)
