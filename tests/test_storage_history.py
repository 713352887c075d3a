"""A user's history on a real SQLite file and a real PostgreSQL: paging, short ids, deleting a
job, forgetting a user (every row that names them, and nothing of anyone else's)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert

from storage.accounts import AccountRepository
from storage.audit import AuditRepository
from storage.bans import BanRepository
from storage.database import Database
from storage.deliveries import DeliveryRepository
from storage.history import HistoryRepository, UserBusy
from storage.jobs import JobRepository, NewJob
from storage.leases import Lease
from storage.ledger import QuotaExceeded, violations
from storage.models import IdentityCheck
from storage.pseudonyms import Pseudonyms
from storage.records import (
    AuditNote,
    ForgetReport,
    JobDeletion,
    JobState,
    OutputRecord,
    PlatformUser,
    UserRecord,
)
from storage.settings import SettingsRepository
from storage.stats import StatsRepository
from tests.databases import all_rows, new_job, query

TODAY = date(2026, 11, 21)
YESTERDAY = TODAY - timedelta(days=1)
QUOTA = 10
PSEUDONYMS = Pseudonyms(b"a server secret of 32 bytes ....")


class World:
    """Users and jobs in given end states, through the real repositories."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.accounts = AccountRepository(db, PSEUDONYMS)
        self.jobs = JobRepository(db)
        self.history = HistoryRepository(db)

    async def job(
        self,
        job_id: str,
        user: UserRecord,
        *,
        outputs: tuple[str, ...] = ("out.jpg",),
        end: JobState | None = JobState.SUCCEEDED,
        community_id: int | None = None,
        keep_inputs: bool = False,
        selfie: str | None = None,
        today: date = TODAY,
        delivery: tuple[str, dict[str, Any]] | None = None,
        lease: Lease | None = None,
    ) -> str:
        credits = max(1, len(outputs))
        new = NewJob(
            id=job_id,
            user=user.id,
            community=community_id,
            operation="headshot",
            params={"operation": "headshot", "prompt": f"{user.platform_user_id} at work"},
            credits=credits,
            selfie_key=selfie or f"inputs/{job_id}.jpg",
            pose_key=None,
            seed=1,
            style="corporate",
            user_prompt=f"{user.platform_user_id} in a suit",
            delivery=delivery,
        )
        await self.jobs.create(new, daily_quota=QUOTA, today=today, lease=lease)
        keep = datetime(2030, 1, 1, tzinfo=UTC) if keep_inputs else None
        if end == JobState.SUCCEEDED:
            await self.jobs.transition(job_id, [JobState.QUEUED], JobState.REHOSTING)
            records = [
                OutputRecord(job_id, n, key, f"tok-{job_id}-{n}", "image/jpeg", 1, 1, 1)
                for n, key in enumerate(outputs)
            ]
            assert await self.jobs.succeed(
                job_id, records, generation_time=2.0, keep_inputs_until=keep
            )
        elif end is not None:
            assert await self.jobs.fail(job_id, "boom", state=end, keep_inputs_until=keep)
        return job_id

    async def forget(self, user: UserRecord, today: date = TODAY) -> ForgetReport:
        return await self.history.forget(
            user.id,
            platform=user.platform,
            platform_user_id=user.platform_user_id,
            subject=PSEUDONYMS.subject(user.platform, user.platform_user_id),
            today=today,
        )

    async def daily_left(self, user: UserRecord, today: date = TODAY) -> int:
        return (await self.accounts.allowance(user.id, daily_quota=QUOTA, today=today)).daily_left


def _hex(prefix: str, n: int = 0) -> str:
    return (prefix + f"{n:x}").ljust(32, "0")


async def test_page_is_newest_first_with_total(db: Database) -> None:
    world = World(db)
    me = await world.accounts.user("test", "me")
    other = await world.accounts.user("test", "other")
    ids = [await world.job(_hex("a", n), me, outputs=(f"o{n}.jpg",)) for n in range(5)]
    await world.job(_hex("b"), other)
    first, total = await world.history.page(me.id, offset=0, limit=2)
    assert total == 5
    assert [j.id for j in first] == [ids[4], ids[3]]
    rest, total = await world.history.page(me.id, offset=2, limit=10)
    assert [j.id for j in rest] == [ids[2], ids[1], ids[0]]
    assert await world.history.delete(ids[4]) is not None
    page, total = await world.history.page(me.id, offset=0, limit=10)
    assert total == 4 and ids[4] not in [j.id for j in page]
    assert await world.history.page(other.id, offset=0, limit=10) != ([], 0)


async def test_find_by_id_or_unambiguous_prefix_of_ones_own_jobs(db: Database) -> None:
    world = World(db)
    me = await world.accounts.user("test", "me")
    other = await world.accounts.user("test", "other")
    one = await world.job("abcdef01" + "0" * 24, me)
    await world.job("abcdef02" + "0" * 24, me)
    theirs = await world.job("fedcba98" + "0" * 24, other)

    found = await world.history.find(me.id, one)
    assert found is not None and found.id == one
    found = await world.history.find(me.id, "abcdef01")
    assert found is not None and found.id == one
    assert await world.history.find(me.id, "abcdef") is None  # ambiguous
    assert await world.history.find(me.id, "abcde") is None  # too short
    assert await world.history.find(me.id, "fedcba98") is None  # someone else's
    assert await world.history.find(me.id, theirs) is None
    assert await world.history.find(me.id, "abcdef0_") is None  # not a pattern
    assert await world.history.find(me.id, "abcdef0%") is None
    await world.history.delete(one)
    assert await world.history.find(me.id, "abcdef01") is None  # deleted
    found = await world.history.find(me.id, "abcdef")  # no longer ambiguous
    assert found is not None and found.id.startswith("abcdef02")


async def test_active_lists_unfinished_jobs_oldest_first(db: Database) -> None:
    world = World(db)
    me = await world.accounts.user("test", "me")
    await world.job("done", me)
    first = await world.job("first", me, end=None)
    second = await world.job("second", me, end=None)
    await world.jobs.transition(second, [JobState.QUEUED], JobState.PROCESSING)
    assert [j.id for j in await world.history.active(me.id)] == [first, second]


async def test_delete_keeps_ledger_and_returns_unshared_keys(
    db: Database, database_url: str
) -> None:
    world = World(db)
    me = await world.accounts.user("test", "me")
    other = await world.accounts.user("test", "other")
    job = await world.job("mine", me, outputs=("shared.jpg", "only.jpg"), keep_inputs=True)
    await world.job("theirs", other, outputs=("shared.jpg",))
    running = await world.job("running", me, end=None)
    before = await world.accounts.allowance(me.id, daily_quota=QUOTA, today=TODAY)
    ledger_before = query(database_url, "SELECT * FROM credit_ledger WHERE job_id = 'mine'")

    assert await world.history.delete(running) is None  # unfinished: untouched
    assert await world.history.delete("nope") is None
    keys = await world.history.delete(job)
    assert keys == JobDeletion(("only.jpg", "inputs/mine.jpg"))
    assert await world.history.delete(job) is None  # already deleted

    deleted = await world.jobs.get(job)
    assert deleted is not None and deleted.deleted_at is not None
    assert deleted.state == JobState.SUCCEEDED
    assert (deleted.params, deleted.user_prompt, deleted.style, deleted.error) == (
        {},
        None,
        None,
        None,
    )
    assert deleted.selfie_key is None and deleted.inputs_expire_at is None
    assert await world.jobs.outputs(job) == []
    assert len(await world.jobs.outputs("theirs")) == 1
    # Deleting never gives credits back: the ledger still counts the job.
    assert query(database_url, "SELECT * FROM credit_ledger WHERE job_id = 'mine'") == ledger_before
    after = await world.accounts.allowance(me.id, daily_quota=QUOTA, today=TODAY)
    assert after == before


async def test_delete_keeps_a_selfie_a_reroll_still_uses(db: Database) -> None:
    world = World(db)
    me = await world.accounts.user("test", "me")
    first = await world.job("first", me, outputs=("a.jpg",), keep_inputs=True)
    await world.job("reroll", me, outputs=("b.jpg",), end=None, selfie="inputs/first.jpg")
    assert await world.history.delete(first) == JobDeletion(("a.jpg",))


async def test_forget_removes_every_row_that_names_the_user(
    db: Database, database_url: str
) -> None:
    world = World(db)
    settings, bans, audit = SettingsRepository(db), BanRepository(db), AuditRepository(db)
    gone = await world.accounts.user("discord", "forgetme-7731")
    kept = await world.accounts.user("discord", "keepme-1234")
    name, kept_name = "discord:forgetme-7731", "discord:keepme-1234"
    guild = await world.accounts.community("discord", "guild-1")

    await world.job(
        "g-ok",
        gone,
        outputs=("shared.jpg", "gone-only.jpg"),
        keep_inputs=True,
        delivery=("discord", {"channel_id": 5, "user_id": "forgetme-7731"}),
    )
    await world.job("g-failed", gone, end=JobState.FAILED, community_id=guild)
    await world.job(
        "k-ok",
        kept,
        outputs=("shared.jpg", "kept-only.jpg"),
        delivery=("discord", {"channel_id": 5, "user_id": "keepme-1234"}),
    )
    await world.accounts.grant(gone.id, 3, actor="operator", note=f"for {name}")
    await world.accounts.grant(kept.id, 2, actor=name, note="from a moderator")
    await world.jobs.refund("g-ok", audit=AuditNote(actor="operator", action="refund", target=name))
    # They were a moderator too: their words stay, their name goes.
    note = AuditNote(actor=name, action="set", community_id=guild)
    await settings.set(community_id=guild, user_id=None, key="style", value="casual", audit=note)
    for community_id in (None, guild):
        await settings.set(
            community_id=community_id, user_id=gone.id, key="style", value=name, audit=note
        )
    await settings.set(community_id=None, user_id=kept.id, key="style", value="x", audit=note)
    ban_note = AuditNote(actor=name, action="ban", target=kept_name, details={"by": name})
    await bans.ban(
        PSEUDONYMS.subject("discord", "keepme-1234"),
        community_id=guild,
        reason="spam",
        audit=ban_note,
    )
    await bans.ban(
        PSEUDONYMS.subject("discord", "forgetme-7731"),
        community_id=None,
        reason=None,
        audit=AuditNote(actor="operator", action="ban", target=name),
    )
    await audit.record(AuditNote(actor="operator", action="note", details={"about": name}))
    deliveries = DeliveryRepository(db)
    kept_before = {
        table: query(database_url, f"SELECT * FROM {table} WHERE {column} = {kept.id}")
        for table, column in (("jobs", "user_id"), ("credit_ledger", "user_id"))
    }

    report = await world.forget(gone)

    assert (report.jobs, report.outputs, report.settings) == (2, 2, 2)
    # g-ok: reserve, commit, refund; g-failed: reserve, release; the grant.
    assert report.ledger_entries == 6
    assert report.store_keys == ("gone-only.jpg", "inputs/g-ok.jpg")
    assert await world.accounts.find_user("discord", "forgetme-7731") is None
    # Every table, every column: no user id of theirs, no trace of their platform id.
    for table, rows in all_rows(database_url).items():
        for values in rows:
            if "user_id" in values:
                assert values["user_id"] != gone.id, (table, values)
            if table == "users":
                assert values["id"] != gone.id
            for column, value in values.items():
                assert "forgetme-7731" not in json.dumps(value, default=str), (table, column)
    # Everyone else's rows are intact, and so is the ban of the forgotten user.
    for table, column in (("jobs", "user_id"), ("credit_ledger", "user_id")):
        assert (
            query(database_url, f"SELECT * FROM {table} WHERE {column} = {kept.id}")
            == kept_before[table]
        )
    assert len(await world.jobs.outputs("k-ok")) == 2
    assert [d.job_id for d in await deliveries.pending("discord")] == ["k-ok"]
    assert (
        await bans.find(PSEUDONYMS.subject("discord", "forgetme-7731"), community_id=None)
        is not None
    )
    kept_ban = await bans.find(PSEUDONYMS.subject("discord", "keepme-1234"), community_id=guild)
    assert kept_ban is not None and kept_ban.banned_by == "forgotten user"
    assert await settings.for_context(user_id=kept.id, community_id=guild) != []
    log = await audit.recent(None, limit=100) + await audit.recent(guild, limit=100)
    assert {e.actor for e in log} == {"operator", "forgotten user"}
    assert {e.target for e in log} == {None, "forgotten user", kept_name}
    assert all(e.details is None for e in log if "forgotten user" in (e.actor, e.target))
    assert next(e for e in log if e.action == "note").details is None


async def test_forget_refuses_a_mismatched_name(db: Database) -> None:
    world = World(db)
    me = await world.accounts.user("discord", "me")
    with pytest.raises(ValueError, match="is not"):
        await world.history.forget(
            me.id,
            platform="discord",
            platform_user_id="someone-else",
            subject=PSEUDONYMS.subject("discord", "someone-else"),
            today=TODAY,
        )
    assert await world.accounts.find_user("discord", "me") == me


def _counts(database_url: str) -> dict[str, int]:
    return {table: len(rows) for table, rows in all_rows(database_url).items()}


async def test_forget_and_return_keeps_todays_use(db: Database, database_url: str) -> None:
    world = World(db)
    me = await world.accounts.user("telegram", "5550001234")
    other = await world.accounts.user("telegram", "5550001235")
    await world.job("ok", me, outputs=("a.jpg", "b.jpg"))  # 2 committed
    await world.job("failed", me, end=JobState.FAILED)  # reserved 1, released 1
    await world.job("old", me, today=YESTERDAY)  # another day's use: not carried
    await world.accounts.grant(me.id, 5, actor="operator", note=None)
    await world.job("theirs", other)
    before = await world.daily_left(me)
    assert before == QUOTA - 2
    other_before = await world.daily_left(other)

    await world.forget(me)
    assert query(database_url, "SELECT subject, day, credits FROM forgotten_usage") == [
        (PSEUDONYMS.subject("telegram", "5550001234"), TODAY.isoformat(), 2)
    ]
    # The kept row names nobody in clear.
    for row in query(database_url, "SELECT * FROM forgotten_usage"):
        assert all("5550001234" not in str(value) for value in row)

    # Returning the same day (several requests at once): the use is back, once; grants are not.
    again = await asyncio.gather(*(world.accounts.user("telegram", "5550001234") for _ in range(5)))
    assert len({u.id for u in again}) == 1
    back = again[0]
    assert back.id != me.id
    assert await world.daily_left(back) == before
    assert (await world.accounts.allowance(back.id, daily_quota=QUOTA, today=TODAY)).granted == 0
    assert await world.daily_left(back, today=TODAY + timedelta(days=1)) == QUOTA
    assert query(database_url, "SELECT count(*) FROM forgotten_usage") == [(0,)]
    # Nobody else is touched: the neighbour, the same digits on another platform, a newcomer.
    assert await world.daily_left(other) == other_before
    for platform, platform_user_id in (("discord", "5550001234"), ("telegram", "5550009999")):
        newcomer = await world.accounts.user(platform, platform_user_id)
        assert await world.daily_left(newcomer) == QUOTA

    # Forgetting again carries the carried-over use along with the new.
    await world.job("more", back)
    await world.forget(back)
    again = await asyncio.gather(*(world.accounts.user("telegram", "5550001234") for _ in range(3)))
    assert await world.daily_left(again[0]) == QUOTA - 3
    async with db.read() as conn:
        assert await violations(conn) == []


async def test_a_forgotten_user_returning_with_a_request_takes_back_todays_use_in_its_job(
    db: Database, database_url: str
) -> None:
    world = World(db)
    me = await world.accounts.user("telegram", "5550001234")
    await world.job("ok", me, outputs=("a.jpg", "b.jpg"))  # 2 of today's allowance used
    await world.forget(me)
    jobs = JobRepository(db, PSEUDONYMS)
    returning = PlatformUser("telegram", "5550001234")

    # The carried-over use counts against the job that makes the row: 9 > 10 - 2.
    with pytest.raises(QuotaExceeded):
        await jobs.create(new_job("too-big", returning, QUOTA - 1), daily_quota=QUOTA, today=TODAY)
    assert await world.accounts.find_user("telegram", "5550001234") is None
    assert query(database_url, "SELECT count(*) FROM forgotten_usage") == [(1,)]

    # Several at once: the user is made once, and the use carried over once.
    made = await asyncio.gather(
        *(
            jobs.create(new_job(f"r{n}", returning), daily_quota=QUOTA, today=TODAY)
            for n in range(3)
        )
    )
    back = await world.accounts.find_user("telegram", "5550001234")
    assert back is not None and {job.user_id for job in made} == {back.id}
    assert await world.daily_left(back) == QUOTA - 2 - 3
    assert query(database_url, "SELECT count(*) FROM forgotten_usage") == [(0,)]
    async with db.read() as conn:
        assert await violations(conn) == []


async def test_forget_refuses_while_a_job_is_unfinished(db: Database, database_url: str) -> None:
    world = World(db)
    me = await world.accounts.user("telegram", "5550001234")
    await world.job("done", me)
    running = await world.job("running", me, end=None)
    # A stale row of another forgotten user, which a forget that goes ahead drops.
    async with db.write() as conn:
        await conn.exec_driver_sql(
            "INSERT INTO forgotten_usage (subject, day, credits, created_at) "
            f"VALUES ('{'0' * 64}', '{YESTERDAY.isoformat()}', 1, '2026-11-20 10:00:00')"
        )
    counts = _counts(database_url)
    ledger_before = query(database_url, "SELECT * FROM credit_ledger ORDER BY id")

    with pytest.raises(UserBusy) as refused:
        await world.forget(me)
    assert refused.value.active == 1
    assert _counts(database_url) == counts
    assert counts["jobs"] == 2 and counts["forgotten_usage"] == 1
    assert query(database_url, "SELECT * FROM credit_ledger ORDER BY id") == ledger_before
    assert await world.accounts.find_user("telegram", "5550001234") == me

    assert await world.jobs.fail(running, "boom")
    report = await world.forget(me)
    assert report.jobs == 2
    assert query(database_url, "SELECT day, credits FROM forgotten_usage") == [
        (TODAY.isoformat(), 1)
    ]


async def test_forget_drops_earlier_days_and_never_writes_them(
    db: Database, database_url: str
) -> None:
    world = World(db)
    early = await world.accounts.user("telegram", "111")
    await world.job("early", early, today=YESTERDAY)
    await world.forget(early, today=YESTERDAY)
    assert query(database_url, "SELECT day, credits FROM forgotten_usage") == [
        (YESTERDAY.isoformat(), 1)
    ]

    # Someone else forgotten today: yesterday's row goes; their own use was all yesterday's.
    late = await world.accounts.user("telegram", "222")
    await world.job("late", late, today=YESTERDAY)
    await world.forget(late, today=TODAY)
    assert query(database_url, "SELECT count(*) FROM forgotten_usage") == [(0,)]

    # Today's use only, never an earlier day's.
    busy = await world.accounts.user("telegram", "333")
    await world.job("busy-old", busy, today=YESTERDAY)
    await world.job("busy-new", busy, outputs=("x.jpg", "y.jpg"))
    await world.forget(busy)
    assert query(database_url, "SELECT day, credits FROM forgotten_usage") == [
        (TODAY.isoformat(), 2)
    ]

    returned = await world.accounts.user("telegram", "111")
    assert await world.daily_left(returned, today=YESTERDAY) == QUOTA
    assert await world.daily_left(returned) == QUOTA
    async with db.read() as conn:
        assert await violations(conn) == []


async def test_accounts_without_pseudonyms_carry_nothing_over(
    db: Database, database_url: str
) -> None:
    world = World(db)
    me = await world.accounts.user("telegram", "5550001234")
    await world.job("ok", me)
    await world.forget(me)
    back = await AccountRepository(db).user("telegram", "5550001234")
    assert await world.daily_left(back) == QUOTA
    assert query(database_url, "SELECT count(*) FROM forgotten_usage") == [(1,)]  # left for later


async def test_violations_check_carryover_entries(db: Database) -> None:
    world = World(db)
    me = await world.accounts.user("telegram", "5550001234")
    await world.job("ok", me)

    class Undo(Exception):
        pass

    forged = [
        ("NULL", "daily", 1, f"'{TODAY.isoformat()}'"),
        ("'ok'", "daily", 1, f"'{TODAY.isoformat()}'"),
        ("NULL", "grant", 1, f"'{TODAY.isoformat()}'"),
        ("NULL", "daily", 0, f"'{TODAY.isoformat()}'"),
        ("NULL", "daily", 1, "NULL"),
    ]
    found: list[list[str]] = []
    for job_id, pool, amount, day in forged:
        with pytest.raises(Undo):
            async with db.write() as conn:
                await conn.exec_driver_sql(
                    "INSERT INTO credit_ledger (user_id, job_id, kind, pool, amount, day, "
                    f"created_at) VALUES ({me.id}, {job_id}, 'carryover', '{pool}', {amount}, "
                    f"{day}, '2026-11-21 10:00:00')"
                )
                found.append(await violations(conn))
                raise Undo
    assert found[0] == []
    assert [len(problems) for problems in found[1:]] == [1, 1, 1, 1]
    assert "names job ok" in found[1][0]
    assert "pool grant" in found[2][0]
    assert "amount 0" in found[3][0]
    assert "no day" in found[4][0]


async def _measured(
    db: Database, job_id: str, *, attempts: int = 2, candidate: str | None = None
) -> None:
    """The identity gate's rows for a job: one measure per attempt of its slot 0, the last one
    still holding `candidate` (an image a finished job should have let go of)."""
    async with db.write() as conn:
        for attempt in range(attempts):
            last = attempt == attempts - 1
            await conn.execute(
                insert(IdentityCheck).values(
                    job_id=job_id,
                    attempt=attempt,
                    slot=0,
                    operation="headshot",
                    backend="modelslab",
                    distance=0.4 + attempt / 10,
                    passed=last,
                    seconds=0.1,
                    content_key=candidate if last else None,
                    content_type="image/jpeg" if last and candidate else None,
                    created_at=datetime(2026, 11, 21, tzinfo=UTC),
                )
            )


def _measures(database_url: str) -> dict[str, int]:
    rows = query(database_url, "SELECT job_id FROM identity_checks")
    return {job_id: [row[0] for row in rows].count(job_id) for (job_id,) in rows}


async def test_delete_and_forget_remove_the_identity_gates_measures(
    db: Database, database_url: str
) -> None:
    world = World(db)
    me = await world.accounts.user("test", "me")
    other = await world.accounts.user("test", "other")
    for job_id, user in (("mine", me), ("mine-2", me), ("theirs", other)):
        await world.job(job_id, user, outputs=(f"{job_id}.jpg",))
    await _measured(db, "mine", candidate="left-behind.jpg")
    await _measured(db, "mine-2", attempts=3, candidate="shared-candidate.jpg")
    await _measured(db, "theirs", candidate="shared-candidate.jpg")
    assert _measures(database_url) == {"mine": 2, "mine-2": 3, "theirs": 2}

    # A candidate image a row still held goes with it, unless another row holds it too.
    deletion = await world.history.delete("mine")
    assert deletion == JobDeletion(("left-behind.jpg", "mine.jpg"))
    assert _measures(database_url) == {"mine-2": 3, "theirs": 2}

    report = await world.forget(me)
    assert report.store_keys == ("mine-2.jpg",)  # theirs still holds the shared candidate
    assert (report.jobs, report.outputs) == (2, 1)
    assert _measures(database_url) == {"theirs": 2}
    # What is forgotten is not counted anywhere any more.
    stats = await StatsRepository(db).summary(None, since=datetime(2026, 1, 1, tzinfo=UTC))
    assert stats.identity_checks == 2
