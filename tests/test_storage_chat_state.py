"""What the chat platforms keep between updates, on a real SQLite file and a real PostgreSQL: waits
for a photo or a choice, Telegram's inbox, Discord's deferred interactions (their tokens
sealed), each job's request key, and `forget` removing all three."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from storage.database import Database
from storage.inbox import MAX_ATTEMPTS, InboxRepository
from storage.interactions import InteractionRepository, NewDeferral
from storage.jobs import NewJob
from storage.leases import Lease
from storage.models import utcnow
from storage.pseudonyms import Pseudonyms
from storage.sealing import Sealer
from storage.waits import WaitRepository
from tests.databases import all_rows, query
from tests.test_storage_history import QUOTA, TODAY, World

NOTE = {"line": "/avatar", "prompt_id": 7}


async def photo_wait(waits: WaitRepository, token: str, person: str = "501", **kw: Any) -> None:
    await waits.add(
        token,
        platform="telegram",
        chat=kw.pop("chat", person),
        person=person,
        for_photo=kw.pop("for_photo", True),
        request=NOTE,
        seconds=kw.pop("seconds", 60),
    )


# ---- waits ---------------------------------------------------------------------------------------


async def test_a_wait_is_taken_once_and_again_only_by_the_same_update(db: Database) -> None:
    waits = WaitRepository(db)
    await photo_wait(waits, "w1")
    found = await waits.photo_wait("telegram", "501", "501", key="telegram:1:10")
    assert found is not None and found.request == NOTE and found.for_photo

    assert await waits.take("w1", key="telegram:1:10")
    assert not await waits.take("w1", key="telegram:1:11")  # another update: gone
    assert await waits.photo_wait("telegram", "501", "501", key="telegram:1:11") is None
    # The same update handled again (its first handler died) finds and takes it again.
    assert await waits.photo_wait("telegram", "501", "501", key="telegram:1:10") is not None
    assert await waits.take("w1", key="telegram:1:10")


async def test_a_photo_wait_replaces_the_earlier_one_and_cancel_ends_them(db: Database) -> None:
    waits = WaitRepository(db)
    await photo_wait(waits, "old")
    await photo_wait(waits, "new")
    await photo_wait(waits, "choice", for_photo=False)
    await photo_wait(waits, "elsewhere", chat="-100")
    found = await waits.photo_wait("telegram", "501", "501", key="k")
    assert found is not None and found.token == "new"
    assert await waits.cancel("telegram", "501", "501", photo_only=True) == 1
    assert await waits.wait("choice", key="k") is not None
    assert await waits.cancel("telegram", "501", "501") == 1
    assert await waits.wait("choice", key="k") is None
    assert await waits.wait("elsewhere", key="k") is not None  # another chat


async def test_an_ended_wait_is_announced_by_one_process_even_if_the_first_dies(
    db: Database,
) -> None:
    waits = WaitRepository(db)
    await photo_wait(waits, "short", person="1", seconds=0.1)
    await photo_wait(waits, "taken", person="2", seconds=0.1)
    assert await waits.take("taken", key="k")
    await photo_wait(waits, "long", person="3", seconds=60)
    assert await waits.claim_ended("telegram", Lease("a", 0.3)) == []  # none ended yet
    await asyncio.sleep(0.2)
    assert await waits.take("short", key="late") is False  # too late to complete it

    claimed = await waits.claim_ended("telegram", Lease("a", 0.3))
    assert [wait.token for wait in claimed] == ["short"]  # taken ones are never announced
    assert await waits.claim_ended("telegram", Lease("b", 30)) == []  # a is announcing it
    await asyncio.sleep(0.4)  # a died before saying it
    assert [wait.token for wait in await waits.claim_ended("telegram", Lease("b", 30))] == ["short"]
    await waits.announced("short", owner="a")  # a's word no longer counts
    assert await waits.wait("short", key="k") is None
    await waits.announced("short", owner="b")
    assert query(db.url, "SELECT token FROM chat_waits ORDER BY token") == [("long",), ("taken",)]


# ---- the inbox -----------------------------------------------------------------------------------


async def test_an_update_is_noted_once_and_taken_over_when_its_handler_dies(db: Database) -> None:
    inbox = InboxRepository(db)
    waits = WaitRepository(db)
    a, b = Lease("replica-a", 0.3), Lease("replica-b", 30)
    update = {"update_id": 10, "message": {"text": "/avatar"}}
    assert await inbox.accept("t:1:10", platform="t", bot="1", person="5", payload=update, lease=a)
    again = await inbox.accept("t:1:10", platform="t", bot="1", person="5", payload={}, lease=b)
    assert not again  # delivered again while here: nothing changes
    assert await inbox.claim("t", "1", b) == ([], [])  # a is handling it

    await photo_wait(waits, "w")
    assert await waits.take("w", key="t:1:10")
    await asyncio.sleep(0.4)  # a died mid-update
    items, dropped = await inbox.claim("t", "1", b)
    assert [(item.key, item.payload, item.attempts) for item in items] == [("t:1:10", update, 2)]
    assert dropped == []
    await inbox.renew(b)
    assert await inbox.claim("t", "1", Lease("replica-c", 30)) == ([], [])
    await inbox.done("t:1:10")  # handled: it goes, with the waits it took
    assert query(db.url, "SELECT count(*) FROM chat_inbox") == [(0,)]
    assert query(db.url, "SELECT count(*) FROM chat_waits") == [(0,)]


async def test_an_update_that_kills_every_handler_is_dropped(db: Database) -> None:
    """Dropped after MAX_ATTEMPTS handlers died on it, with the waits it took; returned with what
    it was (its sender hears that it failed) and whether a job was queued under its key anyway
    (then that job answers)."""
    inbox = InboxRepository(db)
    world = World(db)
    user = await world.accounts.user("telegram", "501")
    await world.jobs.create(
        _job("queued", user.id, request_key="t:1:8"), daily_quota=QUOTA, today=TODAY
    )
    waits = WaitRepository(db)
    await photo_wait(waits, "w")
    assert await waits.take("w", key="t:1:9")  # the photo that ended a wait
    lease = Lease("replica", 0.05)
    for key in ("t:1:8", "t:1:9"):
        payload = {"update_id": int(key.rsplit(":", 1)[1])}
        await inbox.accept(key, platform="t", bot="1", person=None, payload=payload, lease=lease)
    for attempt in range(2, MAX_ATTEMPTS + 1):
        await asyncio.sleep(0.1)
        items, _ = await inbox.claim("t", "1", lease)
        assert [item.attempts for item in items] == [attempt, attempt]
    await asyncio.sleep(0.1)
    items, dropped = await inbox.claim("t", "1", lease)
    assert items == []
    assert [(d.key, d.payload, d.attempts, d.job_queued) for d in dropped] == [
        ("t:1:8", {"update_id": 8}, MAX_ATTEMPTS, True),
        ("t:1:9", {"update_id": 9}, MAX_ATTEMPTS, False),
    ]
    assert query(db.url, "SELECT count(*) FROM chat_inbox") == [(0,)]
    assert query(db.url, "SELECT count(*) FROM chat_waits") == [(0,)]  # the wait it took went


async def test_a_clean_stop_lets_updates_go_at_once(db: Database) -> None:
    inbox = InboxRepository(db)
    a = Lease("replica-a", 30)
    await inbox.accept("t:1:1", platform="t", bot="1", person="5", payload={}, lease=a)
    await inbox.accept("t:2:1", platform="t", bot="2", person="5", payload={}, lease=a)
    await inbox.release("replica-a")
    items, _ = await inbox.claim("t", "1", Lease("replica-b", 30))
    assert [item.key for item in items] == ["t:1:1"]  # the other bot's stays for that bot


# ---- deferred interactions -----------------------------------------------------------------------


def deferral(key: str, person: str = "2001", **kw: Any) -> NewDeferral:
    return NewDeferral(
        key=key,
        platform="discord",
        person=person,
        application_id="99",
        message_id=kw.pop("message_id", "1234"),
        sealed_token=kw.pop("sealed_token", "sealed"),
        expires_at=kw.pop("expires_at", utcnow() + timedelta(minutes=14)),
    )


async def test_an_abandoned_interaction_is_claimed_with_the_job_it_made(db: Database) -> None:
    world = World(db)
    interactions = InteractionRepository(db)
    a, b = Lease("replica-a", 0.3), Lease("replica-b", 30)
    await interactions.add(deferral("discord:1"), a)
    await interactions.add(deferral("discord:2", message_id=None), a)
    await interactions.add(deferral("discord:3"), a)
    await interactions.add(deferral("discord:old", expires_at=utcnow()), a)
    user = await world.accounts.user("discord", "2001")
    await world.jobs.create(
        _job("j2", user.id, request_key="discord:2"), daily_quota=QUOTA, today=TODAY
    )
    await interactions.answered("discord:3")
    assert await interactions.claim_abandoned("discord", b) == []  # a is answering them

    await asyncio.sleep(0.4)  # a died
    claimed = await interactions.claim_abandoned("discord", b)
    assert [(c.key, c.message_id, c.job_id) for c in claimed] == [
        ("discord:1", "1234", None),
        ("discord:2", None, "j2"),
    ]
    await interactions.let_go("discord:1", "replica-b")  # Discord did not answer: later
    again = await interactions.claim_abandoned("discord", Lease("replica-c", 30))
    assert [c.key for c in again] == ["discord:1"]
    assert query(db.url, "SELECT key FROM deferred_interactions ORDER BY key") == [
        ("discord:1",),
        ("discord:2",),
    ]  # the expired one went: its token can end nothing


def test_a_sealed_token_opens_only_for_its_row_under_its_key() -> None:
    key = Pseudonyms(b"k" * 32).derived_key("interaction tokens")
    sealer = Sealer(key)
    sealed = sealer.seal("the-token", row="discord:1")
    assert "the-token" not in sealed and sealed != sealer.seal("the-token", row="discord:1")
    assert sealer.open(sealed, row="discord:1") == "the-token"
    for wrong in (
        lambda: sealer.open(sealed, row="discord:2"),
        lambda: Sealer(Pseudonyms(b"j" * 32).derived_key("interaction tokens")).open(
            sealed, row="discord:1"
        ),
        lambda: sealer.open(sealed[:-4] + "AAAA", row="discord:1"),
        lambda: sealer.open("not base64!", row="discord:1"),
        lambda: sealer.open("", row="discord:1"),
    ):
        with pytest.raises(ValueError, match=r"^a sealed value that does not open under this key$"):
            wrong()
    other = Pseudonyms(b"k" * 32).derived_key("something else")
    assert other != key and len(key) == 32


# ---- request keys and forget ---------------------------------------------------------------------


def _job(job_id: str, user_id: int, *, request_key: str | None) -> NewJob:
    return NewJob(
        id=job_id,
        user=user_id,
        community=None,
        operation="headshot",
        params={"operation": "headshot"},
        credits=1,
        selfie_key=f"inputs/{job_id}.jpg",
        pose_key=None,
        seed=1,
        request_key=request_key,
    )


async def test_a_request_makes_one_job_however_often_it_is_handled(db: Database) -> None:
    world = World(db)
    user = await world.accounts.user("telegram", "501")
    first = await world.jobs.create(
        _job("first", user.id, request_key="telegram:1:10"), daily_quota=1, today=TODAY
    )
    # Handled again: the quota is spent, yet the request's own job comes back, nothing written.
    again = await world.jobs.create(
        _job("again", user.id, request_key="telegram:1:10"), daily_quota=1, today=TODAY
    )
    assert (first.id, again.id) == ("first", "first")
    both = await asyncio.gather(
        *(
            world.jobs.create(
                _job(f"race{n}", user.id, request_key="telegram:1:11"),
                daily_quota=None,
                today=TODAY,
            )
            for n in range(2)
        )
    )
    assert both[0].id == both[1].id
    assert query(db.url, "SELECT count(*) FROM jobs") == [(2,)]
    assert query(db.url, "SELECT count(*) FROM credit_ledger") == [(2,)]


async def test_forget_removes_waits_updates_and_interactions(db: Database) -> None:
    world = World(db)
    waits, inbox, interactions = WaitRepository(db), InboxRepository(db), InteractionRepository(db)
    lease = Lease("replica", 30)
    alice = await world.accounts.user("telegram", "501")
    await world.accounts.user("discord", "501")  # the same id on another platform: kept
    for person in ("501", "502"):
        await photo_wait(waits, f"w{person}", person=person)
        payload = {"message": {"text": f"/headshot by {person}"}}
        await inbox.accept(
            f"telegram:1:{person}",
            platform="telegram",
            bot="1",
            person=person,
            payload=payload,
            lease=lease,
        )
        await interactions.add(deferral(f"discord:{person}", person=person), lease)

    await world.forget(alice)
    assert query(db.url, "SELECT person FROM chat_waits") == [("502",)]
    assert query(db.url, "SELECT person FROM chat_inbox") == [("502",)]
    assert sorted(query(db.url, "SELECT person FROM deferred_interactions")) == [
        ("501",),
        ("502",),
    ]  # those are Discord's
    assert "/headshot by 501" not in repr(all_rows(db.url))
