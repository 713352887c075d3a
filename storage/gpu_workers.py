"""The GPU fleet's registry: each worker's row, kept fresh by its heartbeat.

Workers sit behind NAT, so nothing can ask them anything: they report themselves here (host,
device, operations, capacity, draining, their figures), and the replicas read the rows. A worker
is live while its heartbeat is younger than the timeout, by the database's clock, never a
machine's, and it is not draining.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.database import Database
from storage.leases import database_now
from storage.models import GpuWorker, utcnow

_workers = GpuWorker.__table__


@dataclass(frozen=True)
class WorkerRecord:
    id: str
    host: str
    device: str
    operations: tuple[str, ...]
    capacity: int
    draining: bool
    started_at: datetime
    heartbeat_at: datetime
    jobs_done: int
    jobs_failed: int
    seconds_per_image: float | None  # median of recent
    heartbeat_age: float  # seconds, by the database's clock
    live: bool  # heartbeat_age <= timeout and not draining


@dataclass(frozen=True)
class _Registration:
    host: str
    device: str
    operations: str
    capacity: int
    started_at: datetime


class WorkerRegistry:
    def __init__(self, db: Database) -> None:
        self._db = db
        # What this process registered, to register again a worker whose row was pruned
        # while it lived (its database was out of reach longer than the prune age).
        self._registered: dict[str, _Registration] = {}

    async def register(
        self, *, host: str, device: str, operations: Sequence[str], capacity: int
    ) -> str:
        """A new worker's row; its id."""
        worker_id = secrets.token_hex(16)
        async with self._db.write() as conn:
            now = await _now(conn)
            registration = _Registration(host, device, ",".join(operations), capacity, now)
            await conn.execute(insert(_workers).values(**_row(worker_id, registration, now)))
        self._registered[worker_id] = registration
        return worker_id

    async def heartbeat(
        self,
        worker_id: str,
        *,
        jobs_done: int,
        jobs_failed: int,
        seconds_per_image: float | None,
        draining: bool,
    ) -> None:
        figures = {
            "jobs_done": jobs_done,
            "jobs_failed": jobs_failed,
            "seconds_per_image": seconds_per_image,
            "draining": draining,
        }
        async with self._db.write() as conn:
            updated = await conn.execute(
                update(_workers)
                .where(_workers.c.id == worker_id)
                .values(heartbeat_at=database_now(conn), **figures)
            )
            registration = self._registered.get(worker_id)
            if updated.rowcount == 0 and registration is not None:
                row = _row(worker_id, registration, await _now(conn))
                await conn.execute(insert(_workers).values({**row, **figures}))

    async def unregister(self, worker_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(delete(_workers).where(_workers.c.id == worker_id))
        self._registered.pop(worker_id, None)

    async def workers(self, *, timeout: float) -> list[WorkerRecord]:  # noqa: ASYNC109
        """Every row, the newest worker first. (`timeout`: how long a live worker may be
        silent, not a limit on this call.)"""
        async with self._db.read() as conn:
            now = await _now(conn)
            rows = await conn.execute(select(_workers).order_by(_workers.c.started_at.desc()))
            return [_record(row._mapping, now, timeout) for row in rows]

    async def live(self, *, timeout: float) -> list[WorkerRecord]:  # noqa: ASYNC109
        return [worker for worker in await self.workers(timeout=timeout) if worker.live]

    async def prune(self, *, older_than: float) -> int:
        """Drop the rows of workers silent that long; how many."""
        async with self._db.write() as conn:
            silent_since = database_now(conn) - timedelta(seconds=older_than)
            result = await conn.execute(
                delete(_workers).where(_workers.c.heartbeat_at < silent_since)
            )
            return int(result.rowcount)


async def _now(conn: AsyncConnection) -> datetime:
    """The database's time, as a value (on SQLite, the one machine's clock)."""
    if conn.dialect.name != "postgresql":
        return utcnow()
    return await conn.scalar(select(func.now()))


def _row(worker_id: str, registration: _Registration, now: datetime) -> dict[str, Any]:
    return {
        "id": worker_id,
        "host": registration.host,
        "device": registration.device,
        "operations": registration.operations,
        "capacity": registration.capacity,
        "draining": False,
        "started_at": registration.started_at,
        "heartbeat_at": now,
        "jobs_done": 0,
        "jobs_failed": 0,
        "seconds_per_image": None,
    }


def _record(row: Any, now: datetime, timeout: float) -> WorkerRecord:
    age = max(0.0, (now - row["heartbeat_at"]).total_seconds())
    return WorkerRecord(
        id=row["id"],
        host=row["host"],
        device=row["device"],
        operations=tuple(op for op in row["operations"].split(",") if op),
        capacity=row["capacity"],
        draining=row["draining"],
        started_at=row["started_at"],
        heartbeat_at=row["heartbeat_at"],
        jobs_done=row["jobs_done"],
        jobs_failed=row["jobs_failed"],
        seconds_per_image=row["seconds_per_image"],
        heartbeat_age=age,
        live=age <= timeout and not row["draining"],
    )
