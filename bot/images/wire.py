"""How a call travels to a decode worker: pickled, with large byte strings (the image) sent
beside the pickle rather than copied into it, so that the service's thread holds the GIL only
for the small part while a 10 MiB upload goes down the pipe."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

__all__ = ["receive_call", "send_call"]

_BESIDE = 64 * 1024  # byte strings from this size travel beside the pickle


def send_call(
    conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    wrapped = tuple(
        pickle.PickleBuffer(arg) if isinstance(arg, bytes) and len(arg) >= _BESIDE else arg
        for arg in args
    )
    buffers: list[pickle.PickleBuffer] = []
    header = pickle.dumps((fn, wrapped, kwargs), protocol=5, buffer_callback=buffers.append)
    conn.send_bytes(len(buffers).to_bytes(4, "big") + header)
    for buffer in buffers:
        conn.send_bytes(buffer.raw())


def receive_call(conn: Connection) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    first = conn.recv_bytes()
    buffers = [conn.recv_bytes() for _ in range(int.from_bytes(first[:4], "big"))]
    fn, args, kwargs = pickle.loads(first[4:], buffers=buffers)  # noqa: S301 (our own service)
    return fn, args, kwargs
