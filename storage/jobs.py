"""Jobs and their outputs: creation with its credit reservation, guarded transitions, settlement."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from datetime import date
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import ledger
from storage.database import Database
from storage.models import Job, Output, utcnow
from storage.records import FINISHED_STATES, JobRecord, JobState, OutputRecord


@dataclass(frozen=True)
class NewJob:
    id: str
    user_id: int
    community_id: int | None
    operation: str
    params: dict[str, Any]
    credits: int
    selfie_key: str | None
    pose_key: str | None
    seed: int | None


class JobRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, job: NewJob, *, daily_quota: int | None, today: date) -> JobRecord:
        """Insert a queued job and reserve its credits in one transaction.

        Raises `ledger.QuotaExceeded`, having written nothing, when the user lacks the credits.
        """
        now = utcnow()
        values = {
            "id": job.id,
            "user_id": job.user_id,
            "community_id": job.community_id,
            "operation": job.operation,
            "params": job.params,
            "state": JobState.QUEUED.value,
            "credits_reserved": job.credits,
            "selfie_key": job.selfie_key,
            "pose_key": job.pose_key,
            "seed": job.seed,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
        }
        async with self._db.write() as conn:
            row = (await conn.execute(insert(_JOBS).values(values).returning(_JOBS))).one()
            await ledger.reserve(
                conn,
                user_id=job.user_id,
                job_id=job.id,
                credits=job.credits,
                daily_quota=daily_quota,
                today=today,
            )
            return _job_record(row)

    async def get(self, job_id: str) -> JobRecord | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(_JOBS).where(_JOBS.c.id == job_id))).one_or_none()
            return _job_record(row) if row else None

    async def unfinished(self) -> list[JobRecord]:
        """Every job not yet finished, oldest first: what start-up resumes."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(_JOBS)
                .where(_JOBS.c.state.not_in([s.value for s in FINISHED_STATES]))
                .order_by(_JOBS.c.created_at)
            )
            return [_job_record(r) for r in rows]

    async def transition(
        self, job_id: str, expected: Iterable[JobState], to: JobState, **fields: Any
    ) -> JobRecord | None:
        """Move a job to `to` only if it is in one of `expected`: the job as it now is, or None."""
        if to in FINISHED_STATES:
            raise ValueError("finish a job with succeed() or fail(): they settle its credits")
        async with self._db.write() as conn:
            return await _guarded_update(conn, job_id, expected, to, fields)

    async def succeed(
        self, job_id: str, outputs: list[OutputRecord], *, generation_time: float | None
    ) -> bool:
        """rehosting -> succeeded: keep the outputs, commit a credit per image, release the rest."""
        async with self._db.write() as conn:
            moved = await _guarded_update(
                conn,
                job_id,
                [JobState.REHOSTING],
                JobState.SUCCEEDED,
                {"finished_at": utcnow(), "generation_time": generation_time, **_INPUTS_GONE},
            )
            if moved is None:
                return False
            if outputs:
                now = utcnow()
                await conn.execute(
                    insert(_OUTPUTS), [{**asdict(out), "created_at": now} for out in outputs]
                )
            await ledger.settle(conn, job_id=job_id, delivered=len(outputs))
            return True

    async def fail(self, job_id: str, reason: str, *, state: JobState = JobState.FAILED) -> bool:
        """Any unfinished state -> failed (or cancelled), releasing every reserved credit once."""
        if state not in (JobState.FAILED, JobState.CANCELLED):
            raise ValueError(f"fail() ends a job as failed or cancelled, not {state}")
        unfinished = [s for s in JobState if s not in FINISHED_STATES]
        async with self._db.write() as conn:
            fields = {"error": reason, "finished_at": utcnow(), **_INPUTS_GONE}
            moved = await _guarded_update(conn, job_id, unfinished, state, fields)
            if moved is not None:
                await ledger.settle(conn, job_id=job_id, delivered=0)
            return moved is not None

    async def outputs(self, job_id: str) -> list[OutputRecord]:
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(*_OUTPUT_COLUMNS)
                .where(_OUTPUTS.c.job_id == job_id)
                .order_by(_OUTPUTS.c.position)
            )
            return [OutputRecord(*row) for row in rows]

    async def output_by_token(self, token: str) -> OutputRecord | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(select(*_OUTPUT_COLUMNS).where(_OUTPUTS.c.public_token == token))
            ).one_or_none()
            return OutputRecord(*row) if row else None

    async def referenced_input_keys(self) -> set[str]:
        """The stored selfies and pose images that unfinished jobs still need."""
        async with self._db.read() as conn:
            rows = await conn.execute(select(_JOBS.c.selfie_key, _JOBS.c.pose_key))
            return {key for pair in rows for key in pair if key}


_JOBS = Job.__table__
_OUTPUTS = Output.__table__
_OUTPUT_COLUMNS = [_OUTPUTS.c[f.name] for f in fields(OutputRecord)]
# A finished job needs neither its inputs nor a webhook any more.
_INPUTS_GONE = {"selfie_key": None, "pose_key": None, "webhook_token_hash": None}


async def _guarded_update(
    conn: AsyncConnection,
    job_id: str,
    expected: Iterable[JobState],
    to: JobState,
    values: dict[str, Any],
) -> JobRecord | None:
    result = await conn.execute(
        update(_JOBS)
        .where(_JOBS.c.id == job_id, _JOBS.c.state.in_([s.value for s in expected]))
        .values(state=to.value, updated_at=utcnow(), **values)
        .returning(_JOBS)
    )
    row = result.one_or_none()
    return _job_record(row) if row else None


def _job_record(row: Any) -> JobRecord:
    return JobRecord(
        id=row.id,
        user_id=row.user_id,
        community_id=row.community_id,
        operation=row.operation,
        params=dict(row.params),
        state=JobState(row.state),
        credits_reserved=row.credits_reserved,
        selfie_key=row.selfie_key,
        pose_key=row.pose_key,
        webhook_token_hash=row.webhook_token_hash,
        provider_id=row.provider_id,
        provider_outputs=tuple(row.provider_outputs or ()),
        seed=row.seed,
        eta_at=row.eta_at,
        error=row.error,
        generation_time=row.generation_time,
        attempts=row.attempts,
        created_at=row.created_at,
        submitted_at=row.submitted_at,
        completed_at=row.completed_at,
        finished_at=row.finished_at,
    )
