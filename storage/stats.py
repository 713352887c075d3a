"""Figures for moderators (one community) and operators (everything): what ran, who ran it,
what it cost and how long it took."""

from __future__ import annotations

import statistics
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select

from storage.database import Database
from storage.jobs import MIN_REF_LENGTH, id_matches, job_record, one_match
from storage.models import IdentityCheck, Job, LedgerEntry, Output, User
from storage.records import IdentityFigures, JobListing, JobState, JobStats, LedgerKind

TOP_USERS = 5

_JOBS = Job.__table__
_USERS = User.__table__
_LEDGER = LedgerEntry.__table__
_CHECKS = IdentityCheck.__table__
_OUTPUTS = Output.__table__


class StatsRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def summary(self, community_id: int | None, *, since: datetime) -> JobStats:
        """Jobs created since `since` in one community, or everywhere (DMs included) for None.

        Deleted jobs count: deleting removes a job's content, not the fact that it ran.
        `credits_used` is what those jobs committed (unmetered ones too) less refunds.

        The identity gate's retries count for deleted jobs too (the operator paid for them),
        but its measures do not: they are the user's, and go with the job's content.
        """
        where = [_JOBS.c.created_at >= since, *_in_community(community_id)]
        async with self._db.read() as conn:
            counts = (
                await conn.execute(
                    select(
                        func.count(),
                        func.sum(case((_JOBS.c.state == JobState.SUCCEEDED.value, 1), else_=0)),
                        func.sum(case((_JOBS.c.state == JobState.FAILED.value, 1), else_=0)),
                    )
                    .select_from(_JOBS)
                    .where(*where)
                )
            ).one()
            job_ids = select(_JOBS.c.id).where(*where)
            signed = case(
                (_LEDGER.c.kind == LedgerKind.COMMIT.value, _LEDGER.c.amount),
                (_LEDGER.c.kind == LedgerKind.REFUND.value, -_LEDGER.c.amount),
                else_=0,
            )
            credits = (
                await conn.execute(select(func.sum(signed)).where(_LEDGER.c.job_id.in_(job_ids)))
            ).scalar()
            jobs_per_user = func.count(_JOBS.c.id)
            top = await conn.execute(
                select(_USERS.c.platform_user_id, jobs_per_user)
                .join(_USERS, _USERS.c.id == _JOBS.c.user_id)
                .where(*where)
                .group_by(_USERS.c.id, _USERS.c.platform_user_id)
                .order_by(jobs_per_user.desc(), _USERS.c.platform_user_id)
                .limit(TOP_USERS)
            )
            top_users = tuple((str(user), int(n)) for user, n in top)
            times = (
                await conn.execute(
                    select(_JOBS.c.generation_time).where(
                        *where,
                        _JOBS.c.state == JobState.SUCCEEDED.value,
                        _JOBS.c.generation_time.is_not(None),
                    )
                )
            ).scalars()
            durations = [float(t) for t in times]
            retries = (
                await conn.execute(select(func.sum(_JOBS.c.identity_retries)).where(*where))
            ).scalar()
            identity = await conn.execute(
                select(
                    _CHECKS.c.operation,
                    _CHECKS.c.backend,
                    func.count(),
                    func.sum(case((_CHECKS.c.passed, 1), else_=0)),
                )
                .where(_CHECKS.c.job_id.in_(job_ids), _CHECKS.c.passed.is_not(None))
                .group_by(_CHECKS.c.operation, _CHECKS.c.backend)
                .order_by(_CHECKS.c.operation, _CHECKS.c.backend)
            )
            figures = tuple(
                IdentityFigures(operation, backend, int(checks), int(passed or 0))
                for operation, backend, checks, passed in identity
            )
            unlike = (
                await conn.execute(
                    select(func.count())
                    .select_from(_OUTPUTS)
                    .where(_OUTPUTS.c.job_id.in_(job_ids), _OUTPUTS.c.identity_passed.is_(False))
                )
            ).scalar()
        return JobStats(
            jobs=int(counts[0]),
            succeeded=int(counts[1] or 0),
            failed=int(counts[2] or 0),
            credits_used=int(credits or 0),
            top_users=top_users,
            median_generation_seconds=statistics.median(durations) if durations else None,
            identity_retries=int(retries or 0),
            identity=figures,
            delivered_unlike=int(unlike or 0),
        )

    async def recent_jobs(
        self, community_id: int | None, *, failed_only: bool, limit: int = 10
    ) -> list[JobListing]:
        """The newest jobs in one community, or everywhere for None (the operator's view).

        Jobs their users deleted are left out: there is nothing left of them to look at.
        """
        where = [_JOBS.c.deleted_at.is_(None), *_in_community(community_id)]
        if failed_only:
            where.append(_JOBS.c.state == JobState.FAILED.value)
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(_JOBS, _USERS.c.platform_user_id.label("listing_user"))
                .join(_USERS, _USERS.c.id == _JOBS.c.user_id)
                .where(*where)
                .order_by(_JOBS.c.created_at.desc(), _JOBS.c.id.desc())
                .limit(limit)
            )
            return [JobListing(job_record(row), row.listing_user) for row in rows]

    async def find_job(self, community_id: int | None, ref: str) -> JobListing | None:
        """The job in this community (None: anywhere, the operator's view) whose id is `ref`
        or starts with it (at least 6 characters); None if none or several match.

        Jobs their users deleted are found too: what they cost is still on the ledger, so a
        moderator may still refund one.
        """
        if len(ref) < MIN_REF_LENGTH:
            return None
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(_JOBS, _USERS.c.platform_user_id.label("listing_user"))
                .join(_USERS, _USERS.c.id == _JOBS.c.user_id)
                .where(id_matches(ref), *_in_community(community_id))
                .limit(2)
            )
            row = one_match(rows.all(), ref)
            return JobListing(job_record(row), row.listing_user) if row is not None else None


def _in_community(community_id: int | None) -> list[Any]:
    return [] if community_id is None else [_JOBS.c.community_id == community_id]
