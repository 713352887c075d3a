"""Storage on a real SQLite file and a real PostgreSQL: migrations, reservations under
concurrency, settlement."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, date, datetime

import pytest
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.accounts import AccountRepository, user_id_in
from storage.database import Database
from storage.jobs import JobRepository, NewJob
from storage.ledger import QuotaExceeded, violations
from storage.migrate import downgrade, upgrade
from storage.records import GeneratorAnswer, JobState, OutputRecord, PlatformUser
from tests.databases import query, tables
from tests.test_storage_migrations import head_tables

TODAY = date(2026, 11, 21)


def _job(job_id: str, user_id: int, credits: int = 1) -> NewJob:
    return NewJob(
        id=job_id,
        user=user_id,
        community=None,
        operation="headshot",
        params={"operation": "headshot", "prompt": "p", "samples": credits},
        credits=credits,
        selfie_key=f"inputs/{job_id}.jpg",
        pose_key=None,
        seed=1,
    )


async def test_migrations_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    url = empty_database_url
    expected = head_tables(url)  # every table the migrations make, kept in one place
    await upgrade(url)
    assert tables(url) == expected
    await downgrade(url, "base")
    assert tables(url) == set()
    await upgrade(url)
    assert tables(url) == expected


async def test_sqlite_uses_wal_and_refuses_memory(database_url: str, db: Database) -> None:
    if db.is_sqlite:
        async with db.read():
            pass  # the first connection sets the journal mode
        assert query(database_url, "PRAGMA journal_mode") == [("wal",)]
    with pytest.raises(ValueError, match="in-memory"):
        Database("sqlite+aiosqlite:///:memory:")


async def test_run_write_keeps_its_body_whole_or_not_at_all(db: Database) -> None:
    """`Database.run_write`: on SQLite the body runs in the database's thread, on PostgreSQL in
    a transaction of its own; either way all of it is kept, or none of it when it fails."""

    class Refused(Exception):
        pass

    async def two_users(conn: AsyncConnection, first: str, second: str, refuse: bool) -> int:
        await user_id_in(conn, PlatformUser("test", first), None)
        made = await user_id_in(conn, PlatformUser("test", second), None)
        if refuse:
            raise Refused
        return made

    accounts = AccountRepository(db)
    with pytest.raises(Refused):
        await db.run_write(lambda conn: two_users(conn, "a", "b", True))
    assert await accounts.find_user("test", "a") is None
    assert await accounts.find_user("test", "b") is None
    made = await asyncio.gather(
        *(
            db.run_write(lambda conn, k=k: two_users(conn, f"c{k}", f"d{k}", False))
            for k in range(5)
        )
    )
    for k, user_id in enumerate(made):
        assert await accounts.find_user("test", f"c{k}") is not None
        found = await accounts.find_user("test", f"d{k}")
        assert found is not None and found.id == user_id


async def test_seeds_up_to_two_to_the_32_are_stored(db: Database) -> None:
    """Seeds are 32-bit unsigned: PostgreSQL's INTEGER refused every one above 2**31 - 1."""
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    for job_id, seed in (("low", 0), ("mid", 2**31), ("top", 2**32 - 1)):
        job = dataclasses.replace(_job(job_id, user.id), seed=seed)
        await jobs.create(job, daily_quota=5, today=TODAY)
        stored = await jobs.get(job_id)
        assert stored is not None and stored.seed == seed


@pytest.mark.parametrize(("requests", "balance"), [(20, 5), (12, 0), (8, 8)])
async def test_concurrent_reservations_accept_exactly_the_balance(
    db: Database, requests: int, balance: int
) -> None:
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")

    async def attempt(n: int) -> bool:
        try:
            await jobs.create(_job(f"job{n:04d}", user.id), daily_quota=balance, today=TODAY)
            return True
        except QuotaExceeded:
            return False

    results = await asyncio.gather(*(attempt(n) for n in range(requests)))
    assert sum(results) == balance
    left = await accounts.allowance(user.id, daily_quota=balance, today=TODAY)
    assert left.total == 0


async def test_reservation_uses_daily_allowance_then_grants(db: Database) -> None:
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    await accounts.grant(user.id, 3, actor="operator", note="welcome")
    await jobs.create(_job("a", user.id, credits=2), daily_quota=2, today=TODAY)
    assert (await accounts.allowance(user.id, daily_quota=2, today=TODAY)).granted == 3
    await jobs.create(_job("b", user.id, credits=2), daily_quota=2, today=TODAY)
    left = await accounts.allowance(user.id, daily_quota=2, today=TODAY)
    assert (left.daily_left, left.granted) == (0, 1)
    with pytest.raises(QuotaExceeded) as refused:
        await jobs.create(_job("c", user.id, credits=2), daily_quota=2, today=TODAY)
    assert refused.value.allowance.total == 1
    assert await jobs.get("c") is None
    # A new day brings a new allowance; grants carry over.
    tomorrow = date(2026, 11, 22)
    assert (await accounts.allowance(user.id, daily_quota=2, today=tomorrow)).total == 3


async def test_failure_refunds_once_and_success_commits_delivered(db: Database) -> None:
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    await jobs.create(_job("fail", user.id, credits=2), daily_quota=5, today=TODAY)
    assert await jobs.fail("fail", "boom")
    assert not await jobs.fail("fail", "boom again")
    assert (await accounts.allowance(user.id, daily_quota=5, today=TODAY)).total == 5

    await jobs.create(_job("ok", user.id, credits=2), daily_quota=5, today=TODAY)
    assert await jobs.transition("ok", [JobState.QUEUED], JobState.SUBMITTED)
    assert await jobs.transition("ok", [JobState.SUBMITTED], JobState.REHOSTING)
    out = OutputRecord("ok", 0, "abc.jpg", "tok", "image/jpeg", 1, 1, 10)
    assert await jobs.succeed("ok", [out], generation_time=1.0)
    assert not await jobs.succeed("ok", [out], generation_time=1.0)
    assert not await jobs.fail("ok", "late failure")
    # One image delivered of two reserved: one credit spent, one returned.
    assert (await accounts.allowance(user.id, daily_quota=5, today=TODAY)).total == 4
    done = await jobs.get("ok")
    assert done is not None and done.state == JobState.SUCCEEDED and done.selfie_key is None


async def test_an_answer_is_written_with_the_end_of_a_job_never_moved_to_rehosting(
    db: Database,
) -> None:
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    await jobs.create(_job("j", user.id, credits=2), daily_quota=5, today=TODAY)
    assert await jobs.transition("j", [JobState.QUEUED], JobState.SUBMITTED)
    assert await jobs.transition("j", [JobState.SUBMITTED], JobState.PROCESSING, provider_id="7")
    out = OutputRecord("j", 0, "abc.jpg", "tok", "image/jpeg", 1, 1, 10)
    # Without the answer, only a job that was moved to rehosting (its answer written) may end.
    assert not await jobs.succeed("j", [out], generation_time=1.0)
    completed = datetime(2026, 11, 21, 12, 0, 5, tzinfo=UTC)
    answer = GeneratorAnswer("8", ("https://cdn.example/a.jpg",), completed)
    assert await jobs.succeed("j", [out], generation_time=2.5, answer=answer)
    assert not await jobs.succeed("j", [out], generation_time=2.5, answer=answer)
    done = await jobs.get("j")
    assert done is not None and done.state == JobState.SUCCEEDED
    assert (done.provider_id, done.provider_outputs) == ("8", ("https://cdn.example/a.jpg",))
    assert done.completed_at == completed and done.generation_time == 2.5
    assert [o.content_key for o in await jobs.outputs("j")] == ["abc.jpg"]
    # One image of two: one credit spent, one returned, once.
    assert (await accounts.allowance(user.id, daily_quota=5, today=TODAY)).total == 4


async def test_transitions_never_move_backwards(db: Database) -> None:
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    await jobs.create(_job("j", user.id), daily_quota=5, today=TODAY)
    assert await jobs.transition("j", [JobState.QUEUED], JobState.SUBMITTED)
    assert await jobs.transition("j", [JobState.SUBMITTED], JobState.PROCESSING, provider_id="7")
    assert not await jobs.transition("j", [JobState.SUBMITTED], JobState.PROCESSING)
    assert not await jobs.transition("j", [JobState.QUEUED], JobState.SUBMITTED)
    job = await jobs.get("j")
    assert job is not None and job.state == JobState.PROCESSING and job.provider_id == "7"
    with pytest.raises(ValueError):
        await jobs.transition("j", [JobState.PROCESSING], JobState.SUCCEEDED)


async def test_ledger_refuses_a_second_refund_and_the_checker_catches_overspend(
    db: Database,
) -> None:
    """The database itself refuses a second release; the checker run after every test must be
    able to fail, here on a commit written beside a release."""
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    await jobs.create(_job("j", user.id), daily_quota=5, today=TODAY)
    async with db.read() as connection:
        assert await violations(connection) == []
    await jobs.fail("j", "boom")

    class Undo(Exception):
        pass

    with pytest.raises(IntegrityError):
        async with db.write() as connection:
            await connection.exec_driver_sql(
                "INSERT INTO credit_ledger (user_id, job_id, kind, pool, amount, day, created_at) "
                f"VALUES ({user.id}, 'j', 'release', 'daily', 1, '2026-11-21', '2026-11-21')"
            )

    problems: list[str] = []
    with pytest.raises(Undo):  # the forged entry is rolled back so the autouse check passes
        async with db.write() as connection:
            await connection.exec_driver_sql(
                "INSERT INTO credit_ledger (user_id, job_id, kind, pool, amount, day, created_at) "
                f"VALUES ({user.id}, 'j', 'commit', 'daily', 1, '2026-11-21', '2026-11-21')"
            )
            problems = await violations(connection)
            raise Undo
    assert problems == ["job j (failed): daily reserved 1, settled 2"]


async def test_users_are_created_once_under_concurrency(db: Database) -> None:
    accounts = AccountRepository(db)
    users = await asyncio.gather(*(accounts.user("discord", "42") for _ in range(10)))
    assert len({u.id for u in users}) == 1
