"""Settings, bans, the audit log, statistics and account look-ups, on a real SQLite file and a
real PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import update

from storage.accounts import AccountRepository
from storage.audit import AuditRepository
from storage.bans import BanRepository
from storage.database import Database
from storage.history import HistoryRepository
from storage.jobs import JobRepository, NewJob
from storage.models import Job
from storage.pseudonyms import Pseudonyms
from storage.records import AuditNote, JobState, OutputRecord, SettingRecord, UserRecord
from storage.settings import SettingsRepository
from storage.standing import Standing, StandingRepository
from storage.stats import StatsRepository
from tests.databases import query

TODAY = date(2026, 11, 21)
QUOTA = 10
PSEUDONYMS = Pseudonyms(bytes(range(32)))


def _note(action: str = "set", community_id: int | None = None) -> AuditNote:
    return AuditNote(actor="test:mod", action=action, community_id=community_id)


# --- settings -------------------------------------------------------------------------------


async def test_settings_apply_by_scope(db: Database) -> None:
    accounts, settings = AccountRepository(db), SettingsRepository(db)
    me = await accounts.user("test", "me")
    other = await accounts.user("test", "other")
    here = await accounts.community("test", "here")
    there = await accounts.community("test", "there")
    scopes = [(None, None), (here, None), (there, None), (None, me.id), (here, me.id)]
    scopes += [(here, other.id), (None, other.id)]
    for community_id, user_id in scopes:
        value = {"c": community_id, "u": user_id}
        await settings.set(
            community_id=community_id, user_id=user_id, key="k", value=value, audit=_note()
        )

    def scopes_of(found: list[SettingRecord]) -> set[tuple[int | None, int | None]]:
        assert all(s.value == {"c": s.community_id, "u": s.user_id} for s in found)
        return {(s.community_id, s.user_id) for s in found}

    mine_here = await settings.for_context(user_id=me.id, community_id=here)
    assert scopes_of(mine_here) == {(None, None), (here, None), (None, me.id), (here, me.id)}
    mine_in_dm = await settings.for_context(user_id=me.id, community_id=None)
    assert scopes_of(mine_in_dm) == {(None, None), (None, me.id)}
    community_only = await settings.for_context(user_id=None, community_id=there)
    assert scopes_of(community_only) == {(None, None), (there, None)}
    assert scopes_of(await settings.for_context(user_id=None, community_id=None)) == {(None, None)}


async def test_setting_a_scope_twice_leaves_one_row(db: Database, database_url: str) -> None:
    accounts, settings, audit = AccountRepository(db), SettingsRepository(db), AuditRepository(db)
    me = await accounts.user("test", "me")
    here = await accounts.community("test", "here")
    for community_id, user_id in [(None, None), (here, None), (None, me.id), (here, me.id)]:
        for value in ("first", "second", None, [1, 2]):
            await settings.set(
                community_id=community_id,
                user_id=user_id,
                key="style",
                value=value,
                audit=AuditNote(actor="test:mod", action="set", details={"v": value}),
            )
    assert query(database_url, "SELECT count(*) FROM scoped_settings") == [(4,)]
    found = await settings.for_context(user_id=me.id, community_id=here)
    assert sorted(s.value for s in found) == [[1, 2]] * 4
    assert len(await audit.recent(None, limit=100)) == 16
    assert {row[0] for row in query(database_url, "SELECT updated_by FROM scoped_settings")} == {
        "test:mod"
    }
    # A different key is a different row.
    await settings.set(community_id=None, user_id=None, key="other", value=1, audit=_note())
    assert query(database_url, "SELECT count(*) FROM scoped_settings") == [(5,)]


async def test_unset_removes_exactly_one_scope(db: Database) -> None:
    accounts, settings, audit = AccountRepository(db), SettingsRepository(db), AuditRepository(db)
    me = await accounts.user("test", "me")
    here = await accounts.community("test", "here")
    for community_id in (None, here):
        await settings.set(
            community_id=community_id, user_id=me.id, key="k", value=1, audit=_note()
        )
    logged = len(await audit.recent(None, limit=100))
    removed = await settings.unset(community_id=None, user_id=me.id, key="k", audit=_note("unset"))
    assert removed is True
    left = await settings.for_context(user_id=me.id, community_id=here)
    assert [(s.community_id, s.user_id) for s in left] == [(here, me.id)]
    assert not await settings.unset(community_id=None, user_id=me.id, key="k", audit=_note("unset"))
    assert not await settings.unset(community_id=None, user_id=None, key="k", audit=_note("unset"))
    assert len(await audit.recent(None, limit=100)) == logged + 1  # only the real unset


async def test_update_list_adds_and_removes_atomically(db: Database, database_url: str) -> None:
    accounts, settings, audit = AccountRepository(db), SettingsRepository(db), AuditRepository(db)
    here = await accounts.community("test", "here")
    words = [f"word{n:02d}" for n in range(20)]

    async def add(word: str) -> bool:
        return await settings.update_list(
            community_id=here,
            user_id=None,
            key="blocked",
            add=word,
            audit=AuditNote(actor="test:mod", action="block", community_id=here, target=word),
        )

    assert all(await asyncio.gather(*(add(word) for word in words)))
    (found,) = await settings.for_context(user_id=None, community_id=here)
    assert (found.community_id, found.user_id, found.key) == (here, None, "blocked")
    assert sorted(found.value) == words
    assert len(await audit.recent(here, limit=100)) == 20
    assert query(database_url, "SELECT count(*) FROM scoped_settings") == [(1,)]

    # Adding a word already there, or removing one that is not, changes and logs nothing.
    assert not await add("word07")
    assert not await settings.update_list(
        community_id=here, user_id=None, key="blocked", remove="absent", audit=_note("unblock")
    )
    assert len(await audit.recent(here, limit=100)) == 20

    assert await settings.update_list(
        community_id=here, user_id=None, key="blocked", remove="word07", audit=_note("unblock")
    )
    assert await add("word07")  # appended at the end
    (found,) = await settings.for_context(user_id=None, community_id=here)
    assert found.value[-1] == "word07" and sorted(found.value) == words
    assert len(await audit.recent(None, limit=100)) == 1  # _note logs globally

    # Only the exact scope: the global list is a separate, so far missing, one.
    assert await settings.update_list(
        community_id=None, user_id=None, key="blocked", add="x", audit=_note("block")
    )
    assert [s.value for s in await settings.for_context(user_id=None, community_id=None)] == [["x"]]
    assert await settings.update_list(
        community_id=None, user_id=None, key="blocked", remove="x", audit=_note("unblock")
    )
    assert [s.value for s in await settings.for_context(user_id=None, community_id=None)] == [[]]


async def test_update_list_refuses_a_value_that_is_not_a_list(db: Database) -> None:
    settings, audit = SettingsRepository(db), AuditRepository(db)
    await settings.set(community_id=None, user_id=None, key="style", value="x", audit=_note())
    with pytest.raises(ValueError, match="not a list"):
        await settings.update_list(
            community_id=None, user_id=None, key="style", add="y", audit=_note()
        )
    with pytest.raises(ValueError):
        await settings.update_list(community_id=None, user_id=None, key="k", audit=_note())
    assert len(await audit.recent(None, limit=100)) == 1
    (found,) = await settings.for_context(user_id=None, community_id=None)
    assert found.value == "x"


# --- bans -----------------------------------------------------------------------------------


async def test_bans_by_scope_and_global_preferred(db: Database) -> None:
    accounts, bans, audit = AccountRepository(db), BanRepository(db), AuditRepository(db)
    here = await accounts.community("test", "here")
    there = await accounts.community("test", "there")
    who = PSEUDONYMS.subject("test", "troll")
    assert await bans.find(who, community_id=here) is None

    assert await bans.ban(who, community_id=here, reason="spam", audit=_note("ban", here))
    assert not await bans.ban(who, community_id=here, reason="again", audit=_note("ban", here))
    found = await bans.find(who, community_id=here)
    assert found is not None and (found.community_id, found.reason) == (here, "spam")
    assert found.banned_by == "test:mod" and found.at.tzinfo is not None
    assert await bans.find(who, community_id=there) is None
    assert await bans.find(who, community_id=None) is None  # a DM: only global bans apply

    assert await bans.ban(who, community_id=None, reason="everywhere", audit=_note("ban"))
    for community_id in (here, there, None):
        found = await bans.find(who, community_id=community_id)
        assert found is not None and found.community_id is None

    assert await bans.unban(who, community_id=None, audit=_note("unban"))
    assert not await bans.unban(who, community_id=None, audit=_note("unban"))
    found = await bans.find(who, community_id=here)
    assert found is not None and found.community_id == here
    assert await bans.unban(who, community_id=here, audit=_note("unban", here))
    assert await bans.find(who, community_id=here) is None
    assert [e.action for e in await audit.recent(here)] == ["unban", "ban"]
    assert [e.action for e in await audit.recent(None)] == ["unban", "ban"]


async def test_bans_survive_forget(db: Database) -> None:
    accounts, bans = AccountRepository(db), BanRepository(db)
    troll = await accounts.user("test", "troll")
    who = PSEUDONYMS.subject("test", "troll")
    await bans.ban(who, community_id=None, reason=None, audit=_note("ban"))
    await HistoryRepository(db).forget(
        troll.id, platform="test", platform_user_id="troll", subject=who, today=TODAY
    )
    assert await accounts.find_user("test", "troll") is None
    assert await bans.find(PSEUDONYMS.subject("test", "troll"), community_id=None) is not None


# --- audit and accounts ---------------------------------------------------------------------


async def test_audit_recent_never_shows_another_community(db: Database) -> None:
    accounts, audit = AccountRepository(db), AuditRepository(db)
    here = await accounts.community("test", "here")
    there = await accounts.community("test", "there")
    for n in range(5):
        await audit.record(AuditNote(actor="a", action=f"here-{n}", community_id=here))
        await audit.record(AuditNote(actor="a", action=f"there-{n}", community_id=there))
        await audit.record(AuditNote(actor="a", action=f"global-{n}", details={"n": n}))
    assert [e.action for e in await audit.recent(here)] == [f"here-{n}" for n in range(4, -1, -1)]
    assert [e.action for e in await audit.recent(there, limit=2, offset=1)] == [
        "there-3",
        "there-2",
    ]
    everywhere = await audit.recent(None)
    assert [e.action for e in everywhere] == [f"global-{n}" for n in range(4, -1, -1)]
    assert everywhere[0].details == {"n": 4} and everywhere[0].community_id is None
    assert await audit.recent(here, offset=5) == []


async def test_grant_names_the_user_by_platform_id(db: Database) -> None:
    accounts, audit = AccountRepository(db), AuditRepository(db)
    me = await accounts.user("discord", "42")
    here = await accounts.community("discord", "guild")
    await accounts.grant(me.id, 2, actor="discord:7", note="thanks", community_id=here)
    await accounts.grant(me.id, 1, actor="operator", note=None)
    (local,) = await audit.recent(here)
    assert (local.actor, local.action, local.target) == ("discord:7", "grant", "discord:42")
    assert local.details == {"credits": 2, "note": "thanks"}
    (operator,) = await audit.recent(None)
    assert operator.target == "discord:42"
    allowance = await accounts.allowance(me.id, daily_quota=0, today=TODAY)
    assert allowance.granted == 3
    with pytest.raises(LookupError):
        await accounts.grant(me.id + 100, 1, actor="operator", note=None)


async def test_find_user_and_community_never_create(db: Database, database_url: str) -> None:
    accounts = AccountRepository(db)
    assert await accounts.find_user("test", "ghost") is None
    assert await accounts.find_community("test", "nowhere") is None
    assert query(database_url, "SELECT count(*) FROM users") == [(0,)]
    assert query(database_url, "SELECT count(*) FROM communities") == [(0,)]
    me = await accounts.user("test", "me")
    here = await accounts.community("test", "here")
    assert await accounts.find_user("test", "me") == me
    assert await accounts.find_community("test", "here") == here
    assert await accounts.find_user("other", "me") is None


async def test_a_standing_is_read_as_the_repositories_read_it(db: Database) -> None:
    accounts, bans, scoped = AccountRepository(db), BanRepository(db), SettingsRepository(db)
    standing = StandingRepository(db)
    here = await accounts.community("test", "here")
    there = await accounts.community("test", "there")

    async def of(platform_user_id: str, community_id: int | None) -> Standing:
        return await standing.read(
            platform="test",
            platform_user_id=platform_user_id,
            subject=f"subject-{platform_user_id}",
            community_id=community_id,
        )

    # Never seen: no user, yet the settings of everyone and of the community apply.
    await scoped.set(community_id=None, user_id=None, key="daily_quota", value=5, by="owner")
    await scoped.set(community_id=here, user_id=None, key="daily_quota", value=3, by="mod")
    ghost = await of("ghost", here)
    assert ghost.user is None and ghost.ban is None
    assert ghost.settings == await scoped.for_context(user_id=None, community_id=here)
    assert [row.value for row in ghost.settings] == [5, 3]
    assert await accounts.find_user("test", "ghost") is None  # reading makes no one

    me = await accounts.user("test", "me")
    await scoped.set(community_id=None, user_id=me.id, key="language", value="de", by="me")
    await scoped.set(community_id=there, user_id=None, key="daily_quota", value=9, by="mod")
    note = AuditNote(actor="test:mod", action="ban", target="test:me")
    await bans.ban("subject-me", community_id=there, reason="spam", audit=note)
    mine = await of("me", here)
    assert mine.user == me
    assert mine.settings == await scoped.for_context(user_id=me.id, community_id=here)
    assert mine.ban is None  # banned there, not here
    away = await of("me", there)
    assert away.ban == await bans.find("subject-me", community_id=there)
    assert away.ban is not None and away.ban.reason == "spam"
    await bans.ban("subject-me", community_id=None, reason="everywhere", audit=note)
    assert (await of("me", there)).ban == await bans.find("subject-me", community_id=there)
    assert (await of("me", None)).ban is not None


# --- stats ----------------------------------------------------------------------------------


class Dataset:
    """Jobs with hand-picked communities, outcomes, sizes and generation times."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.accounts = AccountRepository(db)
        self.jobs = JobRepository(db)

    async def job(
        self,
        job_id: str,
        user: UserRecord,
        community_id: int | None,
        *,
        images: int = 1,
        end: JobState | None = JobState.SUCCEEDED,
        seconds: float | None = None,
        created: datetime | None = None,
    ) -> None:
        new = NewJob(
            id=job_id,
            user=user.id,
            community=community_id,
            operation="headshot",
            params={},
            credits=images,
            selfie_key=None,
            pose_key=None,
            seed=1,
        )
        await self.jobs.create(new, daily_quota=QUOTA, today=TODAY)
        if end == JobState.SUCCEEDED:
            await self.jobs.transition(job_id, [JobState.QUEUED], JobState.REHOSTING)
            outputs = [
                OutputRecord(
                    job_id, n, f"{job_id}-{n}.jpg", f"t-{job_id}-{n}", "image/jpeg", 1, 1, 1
                )
                for n in range(images)
            ]
            await self.jobs.succeed(job_id, outputs, generation_time=seconds)
        elif end is not None:
            await self.jobs.fail(job_id, "boom", state=end)
        if created is not None:
            async with self.db.write() as conn:
                await conn.execute(update(Job).where(Job.id == job_id).values(created_at=created))


SINCE = datetime(2026, 11, 1, tzinfo=UTC)


async def _dataset(db: Database) -> tuple[int, int]:
    data = Dataset(db)
    u1 = await data.accounts.user("test", "u1")
    u2 = await data.accounts.user("test", "u2")
    u3 = await data.accounts.user("test", "u3")
    c1 = await data.accounts.community("test", "c1")
    c2 = await data.accounts.community("test", "c2")
    await data.job("c1-old", u1, c1, seconds=99.0, created=datetime(2026, 10, 1, tzinfo=UTC))
    await data.job("c1-a", u1, c1, images=2, seconds=10.0)
    await data.job("c1-b", u1, c1, seconds=20.0)
    await data.job("c1-fail", u2, c1, images=2, end=JobState.FAILED)
    await data.job("c1-cancel", u3, c1, end=JobState.CANCELLED)
    await data.job("c1-open", u2, c1, end=None)
    await data.job("c2-a", u3, c2, seconds=30.0)
    await data.job("dm-a", u2, None, seconds=40.0)
    await data.job("dm-b", u2, None, seconds=None)
    assert await data.jobs.refund("c1-b", audit=_note("refund", c1)) == 1
    return c1, c2


async def test_summary_of_a_community_and_of_everything(db: Database) -> None:
    c1, c2 = await _dataset(db)
    stats = StatsRepository(db)
    one = await stats.summary(c1, since=SINCE)
    assert (one.jobs, one.succeeded, one.failed) == (5, 2, 1)
    assert one.credits_used == 2 + 1 - 1  # c1-a, c1-b less its refund
    assert one.top_users == (("u1", 2), ("u2", 2), ("u3", 1))
    assert one.median_generation_seconds == 15.0

    every = await stats.summary(None, since=SINCE)
    assert (every.jobs, every.succeeded, every.failed) == (8, 5, 1)
    assert every.credits_used == 2 + 1 - 1 + 1 + 1 + 1
    assert every.top_users == (("u2", 4), ("u1", 2), ("u3", 2))
    assert every.median_generation_seconds == 25.0  # of 10, 20, 30, 40 (dm-b has no time)

    c2_only = await stats.summary(c2, since=SINCE)
    assert (c2_only.jobs, c2_only.credits_used, c2_only.top_users) == (1, 1, (("u3", 1),))
    nothing = await stats.summary(c1, since=datetime(2027, 1, 1, tzinfo=UTC))
    assert nothing.jobs == 0 and nothing.top_users == ()
    assert nothing.median_generation_seconds is None and nothing.credits_used == 0
    assert (await stats.summary(c1, since=datetime(2026, 9, 1, tzinfo=UTC))).jobs == 6

    # Deleting a job takes away its content, not the fact that it ran (or what it cost).
    assert await HistoryRepository(db).delete("c1-a") is not None
    assert await stats.summary(c1, since=SINCE) == one


async def test_top_users_are_at_most_five(db: Database) -> None:
    data = Dataset(db)
    for n in range(7):
        user = await data.accounts.user("test", f"user{n}")
        for k in range(n + 1):
            await data.job(f"j{n}-{k}", user, None)
    top = (await StatsRepository(db).summary(None, since=SINCE)).top_users
    assert top == tuple((f"user{n}", n + 1) for n in range(6, 1, -1))


async def test_recent_jobs(db: Database) -> None:
    c1, _ = await _dataset(db)
    stats = StatsRepository(db)
    failed = await stats.recent_jobs(c1, failed_only=True)
    assert [(x.job.id, x.platform_user_id) for x in failed] == [("c1-fail", "u2")]
    assert failed[0].job.state == JobState.FAILED and failed[0].job.error == "boom"
    newest = await stats.recent_jobs(None, failed_only=False, limit=3)
    assert [x.job.id for x in newest] == ["dm-b", "dm-a", "c2-a"]
    in_c1 = await stats.recent_jobs(c1, failed_only=False)
    assert [x.job.id for x in in_c1] == [
        "c1-open",
        "c1-cancel",
        "c1-fail",
        "c1-b",
        "c1-a",
        "c1-old",
    ]
    await HistoryRepository(db).delete("c1-b")
    assert "c1-b" not in [x.job.id for x in await stats.recent_jobs(c1, failed_only=False)]


async def test_find_job_by_id_or_prefix_within_the_community(db: Database) -> None:
    c1, c2 = await _dataset(db)
    data, stats = Dataset(db), StatsRepository(db)
    u1 = await data.accounts.user("test", "u1")
    await data.job("abcdef01", u1, c1)
    await data.job("abcdef02", u1, c2)
    await data.job("direct-message", u1, None)

    found = await stats.find_job(c1, "c1-fai")
    assert found is not None and (found.job.id, found.platform_user_id) == ("c1-fail", "u2")
    assert await stats.find_job(c2, "c1-fail") is None  # another community's job
    assert await stats.find_job(c1, "direct") is None  # a DM's job
    # The operator (no community) finds a job anywhere, DMs included.
    found = await stats.find_job(None, "direct")
    assert found is not None and found.job.id == "direct-message"
    found = await stats.find_job(None, "c1-fail")
    assert found is not None and found.job.community_id == c1
    found = await stats.find_job(c1, "abcdef")  # only one of the two is in c1
    assert found is not None and found.job.id == "abcdef01"
    assert await stats.find_job(None, "abcdef") is None  # ambiguous everywhere
    assert await stats.find_job(None, "abcde") is None  # too short
    assert await stats.find_job(None, "abcde_") is None  # not a pattern
    # A job its user deleted can still be found (and refunded: it still cost them).
    assert await HistoryRepository(db).delete("abcdef01") is not None
    found = await stats.find_job(c1, "abcdef01")
    assert found is not None and found.job.deleted_at is not None
