"""The credit ledger: reserve, commit, release, grant, refund. Append-only, in the caller's
transaction.

A job reserves one credit per requested image, taken from today's allowance first and from
granted credits after. When the job ends, the delivered images are committed (allowance first)
and the rest released, exactly once: the ledger's unique (job, kind, pool) constraint makes a
second settlement impossible even if the caller's state guard were bypassed.

A moderator may refund a succeeded job: its committed credits come back as granted credits
(they carry over, whichever pool they were spent from), at most once per job by the same
constraint. The job's own entries stay, so today's use is still counted.

A user who asks to be forgotten loses their ledger, but not what they used of today's
allowance: that is kept under their pseudonym and comes back as a carryover entry (pool DAILY,
that day, no job) if they return, so forgetting cannot reset the allowance.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date
from typing import Any

from sqlalchemy import bindparam, func, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import Job, LedgerEntry, User, utcnow
from storage.records import FINISHED_STATES, Allowance, JobState, LedgerKind, Pool

# Every job's statements, built once (building and keying a statement cost more than running
# it): what changes from one job to the next is bound when they run.
_LEDGER = LedgerEntry.__table__
# A user's sums by kind and pool: their grants, and today's allowance.
_SUMS = (
    select(_LEDGER.c.kind, _LEDGER.c.pool, func.sum(_LEDGER.c.amount))
    .where(
        _LEDGER.c.user_id == bindparam("user_id"),
        or_(
            _LEDGER.c.pool == Pool.GRANT,
            (_LEDGER.c.pool == Pool.DAILY) & (_LEDGER.c.day == bindparam("today")),
        ),
    )
    .group_by(_LEDGER.c.kind, _LEDGER.c.pool)
)
# What a job reserved, to settle.
_RESERVED = select(_LEDGER.c.user_id, _LEDGER.c.pool, _LEDGER.c.amount, _LEDGER.c.day).where(
    _LEDGER.c.job_id == bindparam("job_id"), _LEDGER.c.kind == LedgerKind.RESERVE
)
_APPEND = insert(_LEDGER)


class QuotaExceeded(Exception):
    def __init__(self, requested: int, allowance: Allowance) -> None:
        super().__init__(f"requested {requested} credits, {allowance.total} available")
        self.requested = requested
        self.allowance = allowance


async def allowance(
    conn: AsyncConnection, user_id: int, daily_quota: int, today: date
) -> Allowance:
    rows = await conn.execute(_SUMS, {"user_id": user_id, "today": today})
    sums: dict[tuple[str, str], int] = {(k, p): int(s or 0) for k, p, s in rows}
    daily_used = _daily_used(sums)
    granted = (
        sums.get((LedgerKind.GRANT, Pool.GRANT), 0)
        + sums.get((LedgerKind.REFUND, Pool.GRANT), 0)
        - sums.get((LedgerKind.RESERVE, Pool.GRANT), 0)
        + sums.get((LedgerKind.RELEASE, Pool.GRANT), 0)
    )
    return Allowance(daily_left=max(0, daily_quota - daily_used), granted=max(0, granted))


async def daily_used(conn: AsyncConnection, user_id: int, today: date) -> int:
    """What the user has used of `today`'s allowance, counted exactly as `allowance` counts it:
    reserved less released, plus any carryover of that day."""
    rows = await conn.execute(
        select(LedgerEntry.kind, LedgerEntry.pool, func.sum(LedgerEntry.amount))
        .where(
            LedgerEntry.user_id == user_id,
            LedgerEntry.pool == Pool.DAILY,
            LedgerEntry.day == today,
        )
        .group_by(LedgerEntry.kind, LedgerEntry.pool)
    )
    return _daily_used({(k, p): int(s or 0) for k, p, s in rows})


def _daily_used(sums: dict[tuple[str, str], int]) -> int:
    return (
        sums.get((LedgerKind.RESERVE, Pool.DAILY), 0)
        - sums.get((LedgerKind.RELEASE, Pool.DAILY), 0)
        + sums.get((LedgerKind.CARRYOVER, Pool.DAILY), 0)
    )


async def carry_over(conn: AsyncConnection, *, user_id: int, usage: list[tuple[date, int]]) -> None:
    """Count (day, credits) pairs of use against those days' allowances of this user."""
    entries = [
        _entry(user_id, None, LedgerKind.CARRYOVER, Pool.DAILY, credits, day)
        for day, credits in usage
    ]
    if any(entry["amount"] < 1 for entry in entries):
        raise ValueError("a carryover is at least one credit")
    await _append(conn, entries)


async def reserve(
    conn: AsyncConnection,
    *,
    user_id: int,
    job_id: str,
    credits: int,
    daily_quota: int | None,
    today: date,
) -> None:
    """Reserve `credits` for a job, or raise QuotaExceeded. `daily_quota=None` is unmetered."""
    if credits < 1:
        raise ValueError("a job reserves at least one credit")
    if daily_quota is None:
        split = {Pool.UNMETERED: credits}
    else:
        await lock_user(conn, user_id)
        left = await allowance(conn, user_id, daily_quota, today)
        if credits > left.total:
            raise QuotaExceeded(credits, left)
        from_daily = min(credits, left.daily_left)
        split = {Pool.DAILY: from_daily, Pool.GRANT: credits - from_daily}
    await _append(
        conn,
        [
            _entry(user_id, job_id, LedgerKind.RESERVE, pool, n, today)
            for pool, n in split.items()
            if n
        ],
    )


async def lock_user(conn: AsyncConnection, user_id: int) -> None:
    """Serialise a user's reservations where the database does not already (SQLite's BEGIN
    IMMEDIATE does; PostgreSQL's READ COMMITTED needs the row lock). Take it before inserting
    anything that points at the user: a foreign key's check holds a share lock on the row, and
    two transactions that each hold one and then ask for the update lock deadlock. FOR NO KEY
    UPDATE, since nothing changes the row's key: the share locks of other inserts pass."""
    if conn.dialect.name == "sqlite":
        return  # the transaction holds the database's one write lock already
    await conn.execute(select(User.id).where(User.id == user_id).with_for_update(key_share=True))


async def settle(conn: AsyncConnection, *, job_id: str, delivered: int) -> None:
    """Commit `delivered` of a job's reserved credits (allowance first) and release the rest."""
    rows = await conn.execute(_RESERVED, {"job_id": job_id})
    order = {Pool.DAILY: 0, Pool.UNMETERED: 1, Pool.GRANT: 2}
    to_commit = delivered
    entries = []
    for user_id, pool, amount, day in sorted(rows, key=lambda row: order[Pool(row.pool)]):
        committed = min(to_commit, amount)
        to_commit -= committed
        if committed:
            entries.append(_entry(user_id, job_id, LedgerKind.COMMIT, pool, committed, day))
        if amount - committed:
            entries.append(
                _entry(user_id, job_id, LedgerKind.RELEASE, pool, amount - committed, day)
            )
    await _append(conn, entries)


async def grant(conn: AsyncConnection, *, user_id: int, credits: int, note: str | None) -> None:
    if credits < 1:
        raise ValueError("a grant is at least one credit")
    entry = _entry(user_id, None, LedgerKind.GRANT, Pool.GRANT, credits, None)
    await _append(conn, [{**entry, "note": note}])


async def committed(conn: AsyncConnection, job_id: str) -> int:
    """The credits a job cost its user: commits from the allowance and from grants. Unmetered
    commits cost nobody anything, so there is nothing of them to give back."""
    total = await conn.execute(
        select(func.sum(LedgerEntry.amount)).where(
            LedgerEntry.job_id == job_id,
            LedgerEntry.kind == LedgerKind.COMMIT,
            LedgerEntry.pool != Pool.UNMETERED,
        )
    )
    return int(total.scalar() or 0)


async def refunded(conn: AsyncConnection, job_id: str) -> bool:
    found = await conn.execute(
        select(LedgerEntry.id).where(
            LedgerEntry.job_id == job_id, LedgerEntry.kind == LedgerKind.REFUND
        )
    )
    return found.first() is not None


async def refund(conn: AsyncConnection, *, user_id: int, job_id: str, credits: int) -> None:
    """Give back a succeeded job's committed credits as granted credits. The caller checks the
    job; the unique (job, kind, pool) constraint refuses a second refund of the same job."""
    if credits < 1:
        raise ValueError("a refund is at least one credit")
    await _append(conn, [_entry(user_id, job_id, LedgerKind.REFUND, Pool.GRANT, credits, None)])


def _entry(
    user_id: int, job_id: str | None, kind: LedgerKind, pool: str, amount: int, day: date | None
) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "job_id": job_id,
        "kind": str(kind),
        "pool": str(pool),
        "amount": amount,
        "day": day,
        "note": None,
        "created_at": utcnow(),
    }


async def _append(conn: AsyncConnection, entries: list[dict[str, Any]]) -> None:
    if entries:
        await conn.execute(_APPEND, entries)


async def violations(conn: AsyncConnection) -> list[str]:
    """Every way the ledger disagrees with itself or with the jobs table (empty when sound).

    Per job and pool, commits + releases never exceed the reservation; a finished job has settled
    all of it, an unfinished one none of it. A refund names a succeeded job, is granted back
    and is no more than what the job committed from the allowance and grants. A carryover names
    no job but a day, in pool daily. Every entry that names a job is that job's user's. Per
    user, the grant balance (grants + refunds − commits − open reservations) is never negative.
    """
    problems: list[str] = []
    jobs = {
        job_id: (state, reserved, owner)
        for job_id, state, reserved, owner in await conn.execute(
            select(Job.id, Job.state, Job.credits_reserved, Job.user_id)
        )
    }
    per_job: dict[str, dict[tuple[str, str], int]] = defaultdict(lambda: defaultdict(int))
    refunds: list[Any] = []
    grant_balance: dict[int, int] = defaultdict(int)
    for entry in await conn.execute(select(LedgerEntry.__table__)):
        if entry.amount < 1:
            problems.append(f"ledger entry {entry.id} has amount {entry.amount}")
        if entry.kind == LedgerKind.GRANT:
            if entry.job_id is not None:
                problems.append(f"grant {entry.id} names job {entry.job_id}")
            grant_balance[entry.user_id] += entry.amount
            continue
        if entry.kind == LedgerKind.CARRYOVER:
            if entry.job_id is not None:
                problems.append(f"carryover {entry.id} names job {entry.job_id}")
            if entry.pool != Pool.DAILY:
                problems.append(f"carryover {entry.id} is in pool {entry.pool}, not {Pool.DAILY}")
            if entry.day is None:
                problems.append(f"carryover {entry.id} names no day")
            continue
        if entry.job_id is None:
            problems.append(f"{entry.kind} entry {entry.id} names no job")
            continue
        if entry.job_id in jobs and jobs[entry.job_id][2] != entry.user_id:
            problems.append(
                f"{entry.kind} entry {entry.id} is user {entry.user_id}'s, "
                f"its job {entry.job_id} user {jobs[entry.job_id][2]}'s"
            )
        if entry.kind == LedgerKind.REFUND:
            refunds.append(entry)
            grant_balance[entry.user_id] += entry.amount
            continue
        per_job[entry.job_id][(entry.kind, entry.pool)] += entry.amount
        if entry.pool == Pool.GRANT:
            sign = {LedgerKind.RESERVE: -1, LedgerKind.RELEASE: 1}.get(LedgerKind(entry.kind), 0)
            grant_balance[entry.user_id] += sign * entry.amount
    for job_id, (state, reserved, _) in jobs.items():
        sums = per_job.get(job_id, {})
        pools = {pool for _, pool in sums}
        total_reserved = sum(v for (kind, _), v in sums.items() if kind == LedgerKind.RESERVE)
        if total_reserved != reserved:
            problems.append(
                f"job {job_id}: reserved {total_reserved} in the ledger, {reserved} on the job"
            )
        for pool in pools:
            r = sums.get((LedgerKind.RESERVE, pool), 0)
            settled = sums.get((LedgerKind.COMMIT, pool), 0) + sums.get(
                (LedgerKind.RELEASE, pool), 0
            )
            if state in FINISHED_STATES and settled != r:
                problems.append(f"job {job_id} ({state}): {pool} reserved {r}, settled {settled}")
            if state not in FINISHED_STATES and settled != 0:
                problems.append(f"job {job_id} ({state}) is open but {pool} settled {settled}")
    for entry in refunds:
        if entry.pool != Pool.GRANT:
            problems.append(f"refund {entry.id} goes to pool {entry.pool}, not {Pool.GRANT}")
        if entry.job_id not in jobs:
            continue  # reported below as an unknown job
        state = jobs[entry.job_id][0]
        if state != JobState.SUCCEEDED:
            problems.append(f"refund {entry.id} names job {entry.job_id} ({state}), not a success")
        spent = sum(
            v
            for (kind, pool), v in per_job.get(entry.job_id, {}).items()
            if kind == LedgerKind.COMMIT and pool != Pool.UNMETERED
        )
        if entry.amount > spent:
            problems.append(
                f"refund {entry.id} of job {entry.job_id}: {entry.amount} refunded, "
                f"{spent} committed"
            )
    unknown = per_job.keys() | {entry.job_id for entry in refunds}
    for job_id in sorted(unknown - jobs.keys()):
        problems.append(f"ledger names unknown job {job_id}")
    for user_id, balance in grant_balance.items():
        if balance < 0:
            problems.append(f"user {user_id}: grant balance {balance} is negative")
    return problems
