"""Figures for moderators (one community) and operators (everything): what ran, who ran it,
what it cost and how long it took."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Integer, case, func, literal_column, select

from storage.database import Database
from storage.jobs import MIN_REF_LENGTH, id_matches, job_record, one_match
from storage.models import IdentityCheck, Job, LedgerEntry, Output, User
from storage.records import (
    DayFigures,
    IdentityFigures,
    JobListing,
    JobState,
    JobStats,
    LedgerKind,
)

TOP_USERS = 5
# The most generation times `daily` reads, shared equally among the days of its period.
MAX_TIMED_JOBS = 20_000

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
            credits = (
                await conn.execute(
                    select(func.sum(_credits_used())).where(_LEDGER.c.job_id.in_(job_ids))
                )
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

    async def daily(
        self, community_id: int | None, *, since: datetime, until: datetime
    ) -> list[DayFigures]:
        """What `summary` counts, day by day: one entry for each UTC day from `since`'s to
        `until`'s, oldest first, days without jobs included. Until now, the entries add up to
        `summary`'s jobs, outcomes and credits used.

        The generation times are each day's newest, at most MAX_TIMED_JOBS in all (an equal
        share per day), so that a long period on a busy bot costs a bounded read: a day with
        more has its median and p90 estimated from its newest.
        """
        days = _days_between(since, until)
        day = _day_index(_JOBS.c.created_at, [_midnight(d) for d in days[1:]]).label("day")
        after = _midnight(days[-1] + timedelta(days=1))
        where = [
            _JOBS.c.created_at >= since,
            _JOBS.c.created_at < after,
            *_in_community(community_id),
        ]
        counts: dict[int, dict[str, int]] = {}
        times: dict[int, list[float]] = {}
        # The day is grouped on from a subquery: PostgreSQL does not take an expression with
        # bound values in GROUP BY as the same one in SELECT.
        async with self._db.read() as conn:
            jobs = select(day, _JOBS.c.state).where(*where).subquery()
            rows = await conn.execute(
                select(jobs.c.day, jobs.c.state, func.count()).group_by(jobs.c.day, jobs.c.state)
            )
            for index, state, count in rows:
                counts.setdefault(int(index), {})[str(state)] = int(count)
            ledger = (
                select(day, _credits_used().label("amount"))
                .select_from(_LEDGER.join(_JOBS, _JOBS.c.id == _LEDGER.c.job_id))
                .where(*where)
                .subquery()
            )
            rows = await conn.execute(
                select(ledger.c.day, func.sum(ledger.c.amount)).group_by(ledger.c.day)
            )
            credits: dict[int, int] = {int(i): int(amount or 0) for i, amount in rows}
            newest_first = func.row_number().over(
                partition_by=day, order_by=(_JOBS.c.created_at.desc(), _JOBS.c.id.desc())
            )
            timed = (
                select(day, _JOBS.c.generation_time.label("seconds"), newest_first.label("rank"))
                .where(
                    *where,
                    _JOBS.c.state == JobState.SUCCEEDED.value,
                    _JOBS.c.generation_time.is_not(None),
                )
                .subquery()
            )
            per_day = max(1, MAX_TIMED_JOBS // len(days))
            rows = await conn.execute(
                select(timed.c.day, timed.c.seconds).where(timed.c.rank <= per_day)
            )
            for index, seconds in rows:
                times.setdefault(int(index), []).append(float(seconds))
        return [
            _day_figures(d, counts.get(i, {}), credits.get(i, 0), times.get(i, []))
            for i, d in enumerate(days)
        ]

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


def _credits_used() -> ColumnElement[int]:
    """A ledger row's share of the credits used: commits count, refunds count against."""
    return case(
        (_LEDGER.c.kind == LedgerKind.COMMIT.value, _LEDGER.c.amount),
        (_LEDGER.c.kind == LedgerKind.REFUND.value, -_LEDGER.c.amount),
        else_=0,
    )


def _days_between(since: datetime, until: datetime) -> list[date]:
    first, last = since.astimezone(UTC).date(), until.astimezone(UTC).date()
    return [first + timedelta(days=n) for n in range(max(0, (last - first).days) + 1)]


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _day_index(column: Any, edges: Sequence[datetime], first: int = 0) -> ColumnElement[int]:
    """Which of the days that `edges` (their midnights) separate `column` falls in, counted
    from `first`. Plain comparisons, so the same SQL on every database, nested as a balanced
    tree: log2(days) comparisons per row, even for a year."""
    if not edges:
        return literal_column(str(first), Integer)
    middle = len(edges) // 2
    return case(
        (column < edges[middle], _day_index(column, edges[:middle], first)),
        else_=_day_index(column, edges[middle + 1 :], first + middle + 1),
    )


def _day_figures(
    day: date, states: dict[str, int], credits_used: int, seconds: list[float]
) -> DayFigures:
    succeeded = states.get(JobState.SUCCEEDED.value, 0)
    failed = states.get(JobState.FAILED.value, 0)
    return DayFigures(
        day=day,
        succeeded=succeeded,
        failed=failed,
        other=sum(states.values()) - succeeded - failed,
        credits_used=credits_used,
        median_generation_seconds=statistics.median(seconds) if seconds else None,
        p90_generation_seconds=_p90(seconds),
    )


def _p90(seconds: list[float]) -> float | None:
    if len(seconds) < 2:
        return seconds[0] if seconds else None
    # "inclusive": between the fastest and the slowest, interpolated as spreadsheets do.
    return statistics.quantiles(seconds, n=10, method="inclusive")[-1]
