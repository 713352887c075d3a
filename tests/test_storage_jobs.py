"""Jobs for the command layer, on a real SQLite file and a real PostgreSQL: the active-job limit,
selfies kept for re-rolls, and a moderator's refund (with the ledger checker that guards it)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import cast

import pytest
from sqlalchemy import select

from bot.faces import FaceToolkit
from bot.jobs.identity import IdentityGate
from storage.accounts import AccountRepository
from storage.audit import AuditRepository
from storage.confirmations import ConfirmationRepository
from storage.database import Database
from storage.identity import MeasuredImage, best_per_slot
from storage.imagestore import ImageStore
from storage.jobs import JobRepository, NewJob, TooManyActive
from storage.leases import Lease
from storage.ledger import QuotaExceeded, violations
from storage.models import Confirmation
from storage.records import AuditNote, JobState, OutputRecord, PlatformCommunity, PlatformUser
from tests.databases import new_job, query

TODAY = date(2026, 11, 21)
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
QUOTA = 10


async def _succeed(
    jobs: JobRepository, job_id: str, images: int, keep: datetime | None = None
) -> None:
    assert await jobs.transition(job_id, [JobState.QUEUED], JobState.REHOSTING)
    outputs = [
        OutputRecord(job_id, n, f"{job_id}-{n}.jpg", f"tok-{job_id}-{n}", "image/jpeg", 1, 1, 1)
        for n in range(images)
    ]
    assert await jobs.succeed(job_id, outputs, generation_time=3.0, keep_inputs_until=keep)


def _count(database_url: str, sql: str) -> int:
    return int(query(database_url, sql)[0][0])


async def test_new_job_keeps_style_and_prompt(db: Database) -> None:
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    new = replace(new_job("j", user.id), style="corporate", user_prompt="navy")
    created = await jobs.create(new, daily_quota=QUOTA, today=TODAY)
    assert (created.style, created.user_prompt) == ("corporate", "navy")
    assert created.deleted_at is None and created.inputs_expire_at is None
    again = await jobs.get("j")
    assert again == created


async def test_a_job_finds_or_makes_its_user_and_community_in_its_own_transaction(
    db: Database, database_url: str
) -> None:
    accounts, jobs = AccountRepository(db), JobRepository(db)
    newcomer = PlatformUser("discord", "newcomer")
    server = PlatformCommunity("discord", "server-1")

    def new(job_id: str, credits: int = 1) -> NewJob:
        return replace(new_job(job_id, 0, credits), user=newcomer, community=server)

    # Refused: nothing is written, not even the user or the community the job would have made.
    with pytest.raises(QuotaExceeded):
        await jobs.create(new("too-big", QUOTA + 1), daily_quota=QUOTA, today=TODAY)
    assert await accounts.find_user("discord", "newcomer") is None
    assert await accounts.find_community("discord", "server-1") is None

    # Five requests at once from someone never seen, in a server never seen: one row each.
    made = await asyncio.gather(
        *(jobs.create(new(f"j{n}"), daily_quota=QUOTA, today=TODAY) for n in range(5))
    )
    user = await accounts.find_user("discord", "newcomer")
    community_id = await accounts.find_community("discord", "server-1")
    assert user is not None and community_id is not None
    assert {(job.user_id, job.community_id) for job in made} == {(user.id, community_id)}
    assert _count(database_url, "SELECT count(*) FROM users") == 1
    assert _count(database_url, "SELECT count(*) FROM communities") == 1
    allowance = await accounts.allowance(user.id, daily_quota=QUOTA, today=TODAY)
    assert allowance.daily_left == QUOTA - 5
    # A user known by id, and no community (a DM), as before.
    dm = await jobs.create(new_job("dm", user.id), daily_quota=QUOTA, today=TODAY)
    assert (dm.user_id, dm.community_id) == (user.id, None)


async def test_too_many_active_counts_unfinished_and_writes_nothing(
    db: Database, database_url: str
) -> None:
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    other = await accounts.user("test", "u2")
    await jobs.create(new_job("a", user.id), daily_quota=QUOTA, today=TODAY, max_active=2)
    await jobs.create(new_job("b", user.id), daily_quota=QUOTA, today=TODAY, max_active=2)
    with pytest.raises(TooManyActive) as refused:
        await jobs.create(new_job("c", user.id), daily_quota=QUOTA, today=TODAY, max_active=2)
    assert refused.value.active == 2
    assert await jobs.get("c") is None
    assert _count(database_url, "SELECT count(*) FROM credit_ledger WHERE job_id='c'") == 0
    # Another user's jobs do not count against this one, nor do finished jobs.
    await jobs.create(new_job("d", other.id), daily_quota=QUOTA, today=TODAY, max_active=1)
    await jobs.fail("a", "boom")
    await _succeed(jobs, "b", 1)
    await jobs.create(new_job("c", user.id), daily_quota=QUOTA, today=TODAY, max_active=2)
    await jobs.create(new_job("e", user.id), daily_quota=QUOTA, today=TODAY, max_active=2)
    with pytest.raises(TooManyActive):
        await jobs.create(new_job("f", user.id), daily_quota=QUOTA, today=TODAY, max_active=2)
    # No limit given: none applies (the old behaviour).
    await jobs.create(new_job("g", user.id), daily_quota=QUOTA, today=TODAY)


async def test_finished_jobs_let_inputs_go_unless_kept(db: Database) -> None:
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    for job_id in ("gone", "kept-ok", "kept-failed", "later", "running"):
        await jobs.create(new_job(job_id, user.id), daily_quota=QUOTA, today=TODAY)
    await _succeed(jobs, "gone", 1)
    await _succeed(jobs, "kept-ok", 1, keep=NOW)
    assert await jobs.fail("kept-failed", "boom", keep_inputs_until=NOW - timedelta(minutes=1))
    await _succeed(jobs, "later", 1, keep=NOW + timedelta(hours=1))

    gone = await jobs.get("gone")
    assert gone is not None and gone.selfie_key is None and gone.inputs_expire_at is None
    kept = await jobs.get("kept-ok")
    assert kept is not None and kept.selfie_key == "inputs/kept-ok.jpg"
    assert kept.inputs_expire_at == NOW and kept.webhook_token_hash is None
    assert await jobs.referenced_input_keys() == {
        "inputs/kept-ok.jpg",
        "inputs/kept-failed.jpg",
        "inputs/later.jpg",
        "inputs/running.jpg",
    }

    expired = await jobs.expired_inputs(NOW)
    assert expired == [
        ("kept-failed", ("inputs/kept-failed.jpg",)),
        ("kept-ok", ("inputs/kept-ok.jpg",)),
    ]
    for job_id, _ in expired:
        await jobs.clear_inputs(job_id)
    assert await jobs.expired_inputs(NOW) == []
    cleared = await jobs.get("kept-ok")
    assert cleared is not None and cleared.selfie_key is None and cleared.inputs_expire_at is None
    assert await jobs.expired_inputs(NOW + timedelta(hours=2)) == [("later", ("inputs/later.jpg",))]
    # An unfinished job's inputs are never cleared.
    await jobs.clear_inputs("running")
    running = await jobs.get("running")
    assert running is not None and running.selfie_key == "inputs/running.jpg"


async def test_expired_inputs_leave_out_a_selfie_a_reroll_still_needs(db: Database) -> None:
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    await jobs.create(new_job("first", user.id), daily_quota=QUOTA, today=TODAY)
    await _succeed(jobs, "first", 1, keep=NOW)
    reroll = new_job("reroll", user.id, selfie="inputs/first.jpg")
    await jobs.create(reroll, daily_quota=QUOTA, today=TODAY)
    assert await jobs.expired_inputs(NOW) == [("first", ())]
    # Both due at once: the key is listed, since no job outside the batch needs it.
    await _succeed(jobs, "reroll", 1, keep=NOW)
    assert await jobs.expired_inputs(NOW) == [
        ("first", ("inputs/first.jpg",)),
        ("reroll", ("inputs/first.jpg",)),
    ]


async def test_refund_once_for_a_success_only(db: Database, database_url: str) -> None:
    accounts, jobs, audit = AccountRepository(db), JobRepository(db), AuditRepository(db)
    user = await accounts.user("test", "u1")
    note = AuditNote(actor="test:mod", action="refund", target="test:u1", details={"job": "ok"})
    await accounts.grant(user.id, 1, actor="op", note=None)
    await jobs.create(new_job("ok", user.id, credits=3), daily_quota=2, today=TODAY)
    await _succeed(jobs, "ok", 2)  # 2 of 3 delivered: 2 committed (daily), 1 grant released
    await jobs.create(new_job("failed", user.id), daily_quota=2, today=TODAY)
    await jobs.fail("failed", "boom")
    await jobs.create(new_job("open", user.id), daily_quota=2, today=TODAY)

    before = await accounts.allowance(user.id, daily_quota=2, today=TODAY)
    assert await jobs.refund("failed", audit=note) == 0
    assert await jobs.refund("open", audit=note) == 0
    assert await jobs.refund("missing", audit=note) == 0
    assert await jobs.refund("ok", audit=note) == 2
    assert await jobs.refund("ok", audit=note) == 0

    after = await accounts.allowance(user.id, daily_quota=2, today=TODAY)
    # Refunded as granted credits; today's use still counts (the job's entries stay).
    assert (after.daily_left, after.granted) == (before.daily_left, before.granted + 2)
    assert _count(database_url, "SELECT count(*) FROM credit_ledger WHERE kind='refund'") == 1
    assert [e.action for e in await audit.recent(None)] == ["refund", "grant"]
    async with db.read() as conn:
        assert await violations(conn) == []


async def test_unmetered_success_has_nothing_to_refund(db: Database) -> None:
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "op")
    await jobs.create(new_job("free", user.id), daily_quota=None, today=TODAY)
    await _succeed(jobs, "free", 1)
    assert await jobs.refund("free", audit=AuditNote(actor="op", action="refund")) == 0


async def test_the_checker_catches_a_forged_refund(db: Database) -> None:
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    await jobs.create(new_job("failed", user.id), daily_quota=QUOTA, today=TODAY)
    await jobs.fail("failed", "boom")
    await jobs.create(new_job("ok", user.id), daily_quota=QUOTA, today=TODAY)
    await _succeed(jobs, "ok", 1)

    class Undo(Exception):
        pass

    forged = (
        "INSERT INTO credit_ledger (user_id, job_id, kind, pool, amount, created_at) "
        f"VALUES ({user.id}, '{{job}}', 'refund', 'grant', {{amount}}, '2026-11-21')"
    )
    found: list[list[str]] = []
    for job_id, amount in (("failed", 1), ("ok", 2)):
        with pytest.raises(Undo):  # rolled back, so the check after the test passes
            async with db.write() as conn:
                await conn.exec_driver_sql(forged.format(job=job_id, amount=amount))
                found.append(await violations(conn))
                raise Undo
    on_failure, too_much = found
    assert len(on_failure) == 2
    assert "names job failed (failed), not a success" in on_failure[0]
    assert "of job failed: 1 refunded, 0 committed" in on_failure[1]
    assert len(too_much) == 1 and "of job ok: 2 refunded, 1 committed" in too_much[0]


async def test_a_webhook_token_names_its_job_until_the_job_ends(db: Database) -> None:
    """Webhooks are matched in the database: any process that receives one finds the job."""
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    await jobs.create(new_job("j", user.id), daily_quota=QUOTA, today=TODAY)
    assert await jobs.id_for_webhook("a" * 64) is None
    await jobs.transition("j", [JobState.QUEUED], JobState.SUBMITTED, webhook_token_hash="a" * 64)
    assert await jobs.id_for_webhook("a" * 64) == "j"
    assert await jobs.id_for_webhook("b" * 64) is None
    await jobs.fail("j", "boom")
    assert await jobs.id_for_webhook("a" * 64) is None


async def test_a_confirmation_works_once_for_its_owner_until_it_expires(db: Database) -> None:
    """Codes live in the database: one replica shows a code, another may be asked to take it."""
    now = [NOW]
    shown_here = ConfirmationRepository(db, ttl_seconds=60, clock=lambda: now[0])
    taken_there = ConfirmationRepository(db, ttl_seconds=60, clock=lambda: now[0])
    code = await shown_here.issue("alice-subject")

    assert not await taken_there.redeem(code, "bob-subject")
    assert await taken_there.redeem(code, "alice-subject")
    assert not await shown_here.redeem(code, "alice-subject")
    late = await shown_here.issue("alice-subject")
    now[0] = NOW + timedelta(seconds=61)
    assert not await taken_there.redeem(late, "alice-subject")
    first = await shown_here.issue("alice-subject")
    second = await shown_here.issue("alice-subject")
    assert not await taken_there.redeem(first, "alice-subject")
    assert await taken_there.redeem(second, "alice-subject")
    async with db.read() as conn:
        rows = (await conn.execute(select(Confirmation.code_hash, Confirmation.owner))).all()
    assert rows == []  # used and expired codes are gone; none was ever kept in clear


async def test_a_job_is_driven_by_its_lease_holder_and_taken_over_once_the_lease_runs_out(
    db: Database,
) -> None:
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    first, second = Lease("replica-a", 0.3), Lease("replica-b", 30)
    await jobs.create(new_job("held", user.id), daily_quota=QUOTA, today=TODAY, lease=first)
    await jobs.create(new_job("free", user.id), daily_quota=QUOTA, today=TODAY)  # no lease

    # A live lease is left alone; a job without one is anyone's.
    assert [job.id for job in await jobs.take_over(second)] == ["free"]
    assert await jobs.renew_leases(first, ["held"]) == {"held"}
    assert await jobs.take_over(second) == []
    await asyncio.sleep(0.5)  # the first process stops renewing: its lease runs out
    (taken,) = await jobs.take_over(second)
    assert (taken.id, taken.lease_owner) == ("held", "replica-b")
    # The first process, back from its stall, can no longer move the job; the new owner can.
    assert await jobs.renew_leases(first, ["held"]) == set()
    assert (
        await jobs.transition("held", [JobState.QUEUED], JobState.SUBMITTED, owner="replica-a")
        is None
    )
    assert not await jobs.fail("held", "late", owner="replica-a")
    moved = await jobs.transition("held", [JobState.QUEUED], JobState.SUBMITTED, owner="replica-b")
    assert moved is not None and moved.state == JobState.SUBMITTED
    # A clean stop lets its jobs go at once; a finished job is nobody's to take.
    await jobs.release_leases("replica-b")
    assert {job.id for job in await jobs.take_over(Lease("replica-c", 30))} == {"held", "free"}
    assert await jobs.fail("free", "done", owner="replica-c")
    assert await jobs.renew_leases(Lease("replica-c", 30), ["held", "free"]) == {"held"}


async def test_a_job_held_but_no_longer_driven_is_left_to_run_out(db: Database) -> None:
    """A process renews only the jobs it drives: one whose task ended without ending the job
    is not kept from the others for ever."""
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    here = Lease("replica-a", 0.3)
    for job_id in ("driven", "dropped"):
        await jobs.create(new_job(job_id, user.id), daily_quota=QUOTA, today=TODAY, lease=here)
    for _ in range(3):
        await asyncio.sleep(0.15)
        assert await jobs.renew_leases(here, ["driven"]) == {"driven"}
    assert [job.id for job in await jobs.take_over(Lease("replica-b", 30))] == ["dropped"]


def _measured(job_id: str, slot: int, attempt: int, distance: float | None) -> MeasuredImage:
    image = OutputRecord(job_id, slot, f"{job_id}-{attempt}-{slot}.jpg", "", "image/jpeg", 1, 1, 1)
    passed = distance is not None and distance <= 0.6
    return MeasuredImage(image, attempt, "headshot", "modelslab", distance, passed, 0.1)


async def test_a_gate_retry_asks_only_for_the_images_that_failed(db: Database) -> None:
    """Three images owed: the first passed, the second failed, the generator never made the
    third (its credit is released at the end). The retry asks for the second alone."""
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    await jobs.create(new_job("j", user.id, credits=3), daily_quota=QUOTA, today=TODAY)
    job = await jobs.transition("j", [JobState.QUEUED], JobState.REHOSTING)
    assert job is not None
    gate = IdentityGate(
        cast(FaceToolkit, None),  # plan() reads the database only
        store=cast(ImageStore, None),
        jobs=jobs,
        retries=2,
        generator_of=lambda provider_id: "modelslab",
    )
    assert (await gate.plan(job)).slots == (0, 1, 2)
    retried = await jobs.retry_for_identity(
        job, [_measured("j", 0, 0, 0.3), _measured("j", 1, 0, 0.8)]
    )
    assert retried is not None
    plan = await gate.plan(retried)
    assert (plan.attempt, plan.slots) == (1, (1,))
    assert plan.seed is not None and plan.seed != job.seed

    # The second fails again: the second retry asks for it once more.
    again = await jobs.transition("j", [JobState.QUEUED], JobState.REHOSTING)
    assert again is not None
    retried = await jobs.retry_for_identity(again, [_measured("j", 1, 1, 0.9)])
    assert retried is not None and (await gate.plan(retried)).slots == (1,)


async def test_the_identity_gate_counts_a_retry_once_and_keeps_what_it_measured(
    db: Database, database_url: str
) -> None:
    accounts, jobs = AccountRepository(db), JobRepository(db)
    user = await accounts.user("test", "u1")
    await jobs.create(new_job("j", user.id, credits=2), daily_quota=QUOTA, today=TODAY)
    job = await jobs.transition("j", [JobState.QUEUED], JobState.REHOSTING)
    assert job is not None and job.identity_retries == 0
    first = [_measured("j", 0, 0, 0.3), _measured("j", 1, 0, 0.8)]

    # Two processes decide on the same retry: only one counts it.
    retried = await jobs.retry_for_identity(job, first)
    assert retried is not None and retried.state == JobState.QUEUED
    assert retried.identity_retries == 1 and retried.provider_outputs == ()
    assert await jobs.retry_for_identity(job, first) is None
    assert [(m.slot, m.passed) for m in await jobs.kept_images("j")] == [(0, True), (1, False)]

    # The retry's image fails too: the closer one of slot 1 is delivered, unlike, refunded.
    again = await jobs.transition("j", [JobState.QUEUED], JobState.REHOSTING)
    assert again is not None
    last = [_measured("j", 1, 1, 0.9)]
    chosen = best_per_slot([*await jobs.kept_images("j"), *last])
    assert [(m.slot, m.attempt, m.distance) for m in chosen] == [(0, 0, 0.3), (1, 0, 0.8)]
    outputs = [replace(m.as_output(), public_token=f"t{m.slot}") for m in chosen]
    assert await jobs.succeed("j", outputs, generation_time=1.0, measured=last)
    assert not await jobs.succeed("j", outputs, generation_time=1.0, measured=last)

    kinds = query(
        database_url,
        "SELECT kind, sum(amount) FROM credit_ledger WHERE job_id='j' GROUP BY kind ORDER BY kind",
    )
    assert [tuple(row) for row in kinds] == [("commit", 2), ("refund", 1), ("reserve", 2)]
    assert [(o.identity_distance, o.identity_passed) for o in await jobs.outputs("j")] == [
        (0.3, True),
        (0.8, False),
    ]
    assert await jobs.kept_images("j") == []  # every measure let go of its image
    assert _count(database_url, "SELECT count(*) FROM identity_checks WHERE job_id='j'") == 3
    # The image delivered is in use; the one not delivered is not.
    assert await jobs.unused_images(["j-0-1.jpg", "j-1-1.jpg"]) == ["j-1-1.jpg"]
