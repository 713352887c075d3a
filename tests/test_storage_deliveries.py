"""Deliveries still owed to a chat, on a real SQLite file: noted, read back by platform in
order, cleared; gone with the job when the user deletes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.database import Database
from storage.deliveries import DeliveryRepository
from storage.records import JobState, PendingDelivery
from tests.conftest import db_file
from tests.test_storage_history import World


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return db_file(tmp_path)


async def test_pending_deliveries_by_platform_in_order_until_done(db: Database) -> None:
    world = World(db)
    user = await world.accounts.user("discord", "u1")
    for job_id in ("j1", "j2", "j3"):
        await world.job(job_id, user, end=None)
    deliveries = DeliveryRepository(db)
    await deliveries.remember("j2", "discord", {"channel_id": 2, "user_id": 7})
    await deliveries.remember("j1", "discord", {"channel_id": 1, "user_id": 7, "message_id": 9})
    await deliveries.remember("j3", "telegram", {"chat_id": 3})

    assert await deliveries.pending("discord") == [
        PendingDelivery("j2", {"channel_id": 2, "user_id": 7}),
        PendingDelivery("j1", {"channel_id": 1, "user_id": 7, "message_id": 9}),
    ]
    await deliveries.done("j2")
    await deliveries.done("j2")  # twice is harmless: a result is shown once, noted as done once
    assert [d.job_id for d in await deliveries.pending("discord")] == ["j1"]
    assert [d.job_id for d in await deliveries.pending("telegram")] == ["j3"]


async def test_deleting_a_job_clears_its_delivery(db: Database) -> None:
    world = World(db)
    user = await world.accounts.user("discord", "u1")
    await world.job("done", user, end=JobState.SUCCEEDED)
    deliveries = DeliveryRepository(db)
    await deliveries.remember("done", "discord", {"channel_id": 1, "user_id": 7})

    assert await world.history.delete("done") is not None
    assert await deliveries.pending("discord") == []
