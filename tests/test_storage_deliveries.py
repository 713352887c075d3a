"""Deliveries still owed to a chat, on a real SQLite file and a real PostgreSQL: noted with the
job in the transaction that creates it, read back by platform in order, cleared; gone with the
job when the user deletes it."""

from __future__ import annotations

import asyncio

import pytest

from storage.audit import AuditRepository
from storage.database import Database
from storage.deliveries import DeliveryRepository
from storage.leases import Lease
from storage.ledger import QuotaExceeded
from storage.records import PendingDelivery
from tests.test_storage_history import QUOTA, World


async def test_pending_deliveries_by_platform_in_order_until_done(db: Database) -> None:
    world = World(db)
    user = await world.accounts.user("discord", "u1")
    await world.job("j2", user, end=None, delivery=("discord", {"channel_id": 2, "user_id": 7}))
    await world.job("j1", user, end=None, delivery=("discord", {"channel_id": 1, "user_id": 7}))
    await world.job("j3", user, end=None, delivery=("telegram", {"chat_id": 3}))
    await world.job("j4", user, end=None)  # nobody to deliver to (the command line)
    deliveries = DeliveryRepository(db)

    assert await deliveries.pending("discord") == [
        PendingDelivery("j2", {"channel_id": 2, "user_id": 7}),
        PendingDelivery("j1", {"channel_id": 1, "user_id": 7}),
    ]
    await deliveries.done("j2")
    await deliveries.done("j2")  # twice is harmless
    assert [d.job_id for d in await deliveries.pending("discord")] == ["j1"]
    assert [d.job_id for d in await deliveries.pending("telegram")] == ["j3"]


async def test_a_delivery_can_be_retargeted_until_done(db: Database) -> None:
    world = World(db)
    user = await world.accounts.user("telegram", "u1")
    await world.job("j1", user, end=None, delivery=("telegram", {"chat_id": 3}))
    deliveries = DeliveryRepository(db)
    await deliveries.retarget("j1", {"chat_id": 3, "status_id": 9})
    assert await deliveries.pending("telegram") == [
        PendingDelivery("j1", {"chat_id": 3, "status_id": 9})
    ]
    await deliveries.done("j1")
    await deliveries.retarget("j1", {"chat_id": 4})  # shown already: nothing to change
    assert await deliveries.pending("telegram") == []


async def test_a_refused_job_notes_no_delivery(db: Database) -> None:
    world = World(db)
    user = await world.accounts.user("discord", "u1")
    with pytest.raises(QuotaExceeded):
        await world.job(
            "big",
            user,
            outputs=tuple(f"o{n}.jpg" for n in range(QUOTA + 1)),
            end=None,
            delivery=("discord", {"channel_id": 1, "user_id": 7}),
        )
    assert await DeliveryRepository(db).pending("discord") == []


async def test_deleting_a_job_clears_its_delivery(db: Database) -> None:
    world = World(db)
    user = await world.accounts.user("discord", "u1")
    await world.job("done", user, delivery=("discord", {"channel_id": 1, "user_id": 7}))
    deliveries = DeliveryRepository(db)
    assert len(await deliveries.pending("discord")) == 1

    assert await world.history.delete("done") is not None
    assert await deliveries.pending("discord") == []


async def test_a_result_is_shown_by_one_process_and_taken_over_when_it_stops(
    db: Database,
) -> None:
    """After a restart or a replica's death, one process claims what is owed: never two."""
    world = World(db)
    user = await world.accounts.user("telegram", "u1")
    first = Lease("replica-a", 0.3)
    target = {"chat_id": 3, "user_id": 7}
    await world.job("live", user, end=None, delivery=("telegram", target), lease=first)
    await world.job("orphan", user, end=None, delivery=("telegram", target))  # no lease: free
    deliveries = DeliveryRepository(db)
    second, third = Lease("replica-b", 30), Lease("replica-c", 30)

    assert [d.job_id for d in await deliveries.claim("telegram", second)] == ["orphan"]
    assert await deliveries.claim("telegram", third) == []  # b shows it; a's lease is live
    assert await deliveries.claim("discord", third) == []
    await asyncio.sleep(0.5)  # replica a stops renewing
    assert [d.job_id for d in await deliveries.claim("telegram", third)] == ["live"]
    await world.jobs.renew_leases(second, [])  # b renews: its delivery stays its own
    assert await deliveries.claim("telegram", Lease("replica-d", 30)) == []
    await world.jobs.release_leases("replica-b")  # a clean stop lets it go at once
    assert [d.job_id for d in await deliveries.claim("telegram", Lease("replica-d", 30))] == [
        "orphan"
    ]


async def test_only_the_lease_holder_shows_a_result_and_a_second_showing_is_counted(
    db: Database,
) -> None:
    """Just before posting, a process takes the result to show: refused while another holds
    it. Taking over a result another process had begun to show is counted (it may be shown
    twice); if both did show it, the second to record it finds it gone: counted too."""
    world = World(db)
    user = await world.accounts.user("telegram", "u1")
    first, second = Lease("replica-a", 0.3), Lease("replica-b", 30)
    await world.job("j", user, end=None, delivery=("telegram", {"chat_id": 3}), lease=first)
    deliveries = DeliveryRepository(db)

    assert await deliveries.take_to_show("j", first)
    assert not await deliveries.take_to_show("j", second)  # a's lease is live
    await asyncio.sleep(0.5)  # a stalls past its lease
    assert await deliveries.take_to_show("j", second)
    assert not await deliveries.take_to_show("j", first)  # back from the stall: not a's now

    assert await deliveries.done("j", shown_by="replica-b")
    assert not await deliveries.done("j", shown_by="replica-a")  # a had posted it too
    assert not await deliveries.take_to_show("j", first)  # shown: nobody shows it again
    counted = sorted(
        (entry.action, entry.actor, entry.target)
        for entry in await AuditRepository(db).recent(None, limit=10)
    )
    assert counted == [
        ("delivery_repeated", "replica-b", "j"),  # b took over what a had begun to show
        ("duplicate_delivery", "replica-a", "j"),  # a found it recorded already
    ]
