"""Jobs and their outputs: creation with its credit reservation, guarded transitions, settlement."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import select, update

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
        async with self._db.write() as session:
            row = Job(
                id=job.id,
                user_id=job.user_id,
                community_id=job.community_id,
                operation=job.operation,
                params=job.params,
                state=JobState.QUEUED,
                credits_reserved=job.credits,
                selfie_key=job.selfie_key,
                pose_key=job.pose_key,
                seed=job.seed,
                attempts=0,
            )
            session.add(row)
            await session.flush()
            await ledger.reserve(
                session,
                user_id=job.user_id,
                job_id=job.id,
                credits=job.credits,
                daily_quota=daily_quota,
                today=today,
            )
            return _job_record(row)

    async def get(self, job_id: str) -> JobRecord | None:
        async with self._db.read() as session:
            row = await session.get(Job, job_id)
            return _job_record(row) if row else None

    async def get_by_webhook_hash(self, token_hash: str) -> JobRecord | None:
        async with self._db.read() as session:
            row = (
                await session.execute(select(Job).where(Job.webhook_token_hash == token_hash))
            ).scalar_one_or_none()
            return _job_record(row) if row else None

    async def unfinished(self) -> list[JobRecord]:
        """Every job not yet finished, oldest first: what start-up resumes."""
        async with self._db.read() as session:
            rows = await session.execute(
                select(Job)
                .where(Job.state.not_in([s.value for s in FINISHED_STATES]))
                .order_by(Job.created_at)
            )
            return [_job_record(r) for r in rows.scalars()]

    async def transition(
        self, job_id: str, expected: Iterable[JobState], to: JobState, **fields: Any
    ) -> bool:
        """Move a job to `to` only if it is in one of `expected`; False if it was not."""
        if to in FINISHED_STATES:
            raise ValueError("finish a job with succeed() or fail(): they settle its credits")
        async with self._db.write() as session:
            return await _guarded_update(session, job_id, expected, to, fields)

    async def succeed(
        self, job_id: str, outputs: list[OutputRecord], *, generation_time: float | None
    ) -> bool:
        """rehosting -> succeeded: keep the outputs, commit a credit per image, release the rest."""
        async with self._db.write() as session:
            now = utcnow()
            moved = await _guarded_update(
                session,
                job_id,
                [JobState.REHOSTING],
                JobState.SUCCEEDED,
                {
                    "finished_at": now,
                    "generation_time": generation_time,
                    "selfie_key": None,
                    "pose_key": None,
                    "webhook_token_hash": None,
                },
            )
            if not moved:
                return False
            for out in outputs:
                session.add(
                    Output(
                        job_id=job_id,
                        position=out.position,
                        content_key=out.content_key,
                        public_token=out.public_token,
                        content_type=out.content_type,
                        width=out.width,
                        height=out.height,
                        size_bytes=out.size_bytes,
                    )
                )
            await ledger.settle(session, job_id=job_id, delivered=len(outputs))
            return True

    async def fail(self, job_id: str, reason: str, *, state: JobState = JobState.FAILED) -> bool:
        """Any unfinished state -> failed (or cancelled), releasing every reserved credit once."""
        if state not in (JobState.FAILED, JobState.CANCELLED):
            raise ValueError(f"fail() ends a job as failed or cancelled, not {state}")
        unfinished = [s for s in JobState if s not in FINISHED_STATES]
        async with self._db.write() as session:
            moved = await _guarded_update(
                session,
                job_id,
                unfinished,
                state,
                {
                    "error": reason,
                    "finished_at": utcnow(),
                    "selfie_key": None,
                    "pose_key": None,
                    "webhook_token_hash": None,
                },
            )
            if moved:
                await ledger.settle(session, job_id=job_id, delivered=0)
            return moved

    async def outputs(self, job_id: str) -> list[OutputRecord]:
        async with self._db.read() as session:
            rows = await session.execute(
                select(Output).where(Output.job_id == job_id).order_by(Output.position)
            )
            return [_output_record(r) for r in rows.scalars()]

    async def output_by_token(self, token: str) -> OutputRecord | None:
        async with self._db.read() as session:
            row = (
                await session.execute(select(Output).where(Output.public_token == token))
            ).scalar_one_or_none()
            return _output_record(row) if row else None

    async def referenced_input_keys(self) -> set[str]:
        """The stored selfies and pose images that unfinished jobs still need."""
        async with self._db.read() as session:
            rows = await session.execute(select(Job.selfie_key, Job.pose_key))
            return {key for pair in rows for key in pair if key}


async def _guarded_update(
    session: Any, job_id: str, expected: Iterable[JobState], to: JobState, fields: dict[str, Any]
) -> bool:
    result = await session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state.in_([s.value for s in expected]))
        .values(state=to.value, updated_at=utcnow(), **fields)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount == 1)


def _job_record(row: Job) -> JobRecord:
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


def _output_record(row: Output) -> OutputRecord:
    return OutputRecord(
        job_id=row.job_id,
        position=row.position,
        content_key=row.content_key,
        public_token=row.public_token,
        content_type=row.content_type,
        width=row.width,
        height=row.height,
        size_bytes=row.size_bytes,
    )
