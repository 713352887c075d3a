"""What /admin workers shows: the GPU workers this bot's jobs go to, as plain rows.

On PostgreSQL (the cluster) they are the rows of the worker registry, with the figures each
worker reports in its heartbeat. On a single machine (SQLite) the one worker is the bot's own
child process, known from `LocalBackend`'s memory. A bot on ModelsLab alone has none.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from backends.base import Backend
from backends.fallback import FallbackBackend
from backends.local.backend import ChildWorkerStatus, LocalBackend

if TYPE_CHECKING:
    from storage.gpu_workers import WorkerRecord, WorkerRegistry


@dataclass(frozen=True)
class WorkerView:
    host: str
    device: str
    operations: tuple[str, ...]
    capacity: int
    jobs_done: int
    jobs_failed: int
    seconds_per_image: float | None
    # Seconds since its last heartbeat, by the database's clock; None for the child worker,
    # which has no heartbeat (the bot sees its process).
    heartbeat_age: float | None
    draining: bool
    # Counted in the dispatcher's capacity: heard from within the timeout and not draining
    # (the child: its process runs).
    live: bool
    # Not heard from for longer than the timeout: the worker is gone (killed, cut off).
    silent: bool = False
    # The bot's own child process (single machine): it stops with the bot.
    child: bool = False
    # Seconds since it last finished a job (the child worker only).
    last_job_age: float | None = None


class FleetView:
    def __init__(
        self, backend: Backend, registry: WorkerRegistry | None, *, timeout: float
    ) -> None:
        """`registry`: the cluster's worker registry (PostgreSQL), else None. `timeout`: how long
        a worker may be silent before it counts as dead (GPU_WORKER_TIMEOUT_SECONDS)."""
        self._backend = backend
        self._registry = registry
        self._timeout = timeout

    @property
    def has_gpu(self) -> bool:
        """Whether this bot generates on GPU workers at all (else on ModelsLab alone)."""
        return self._registry is not None or self._child() is not None

    @property
    def fallback(self) -> str | None:
        """The generator that takes the operations no live worker serves (FALLBACK_BACKEND)."""
        backend = self._backend
        if isinstance(backend, FallbackBackend) and self.has_gpu:
            return backend.secondary.name
        return None

    async def workers(self) -> list[WorkerView]:
        """Every worker the bot knows of, dead ones included (they are marked)."""
        if self._registry is not None:
            records = await self._registry.workers(timeout=self._timeout)
            return [_from_record(record, self._timeout) for record in records]
        child = self._child()
        if child is not None:
            return [_from_child(child.fleet_status())]
        return []

    def _child(self) -> LocalBackend | None:
        backend = self._backend
        candidates = (
            (backend.primary, backend.secondary)
            if isinstance(backend, FallbackBackend)
            else (backend,)
        )
        return next((b for b in candidates if isinstance(b, LocalBackend)), None)


def _from_record(record: WorkerRecord, timeout: float) -> WorkerView:
    return WorkerView(
        host=record.host,
        device=record.device,
        operations=tuple(record.operations),
        capacity=record.capacity,
        jobs_done=record.jobs_done,
        jobs_failed=record.jobs_failed,
        seconds_per_image=record.seconds_per_image,
        heartbeat_age=record.heartbeat_age,
        draining=record.draining,
        live=record.live,
        silent=record.heartbeat_age > timeout,
    )


def _from_child(status: ChildWorkerStatus) -> WorkerView:
    last = status.last_finished_at
    return WorkerView(
        host=socket.gethostname(),
        device=status.device,
        operations=status.operations,
        capacity=status.capacity,
        jobs_done=status.jobs_done,
        jobs_failed=status.jobs_failed,
        seconds_per_image=status.seconds_per_image,
        heartbeat_age=None,
        draining=False,
        live=status.alive,
        child=True,
        last_job_age=None if last is None else max(0.0, time.time() - last),
    )
