"""Three real replicas on one PostgreSQL and one provider, in Telegram webhook mode behind a
load balancer: the provider's cap holds across them, and every result is delivered once."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from backends.modelslab.simulator import Simulator
from tests.cluster import Cluster, result_counts
from tests.conftest import EXAMPLE_SELFIE
from tests.databases import query
from tests.fake_telegram import FakeTelegram

USERS = 30
JOBS_PER_USER = 10
COMMAND = "/headshot corporate"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("database_kind", ["postgresql"])
async def test_three_replicas_one_provider_300_jobs(
    tmp_path: Path, simulator: Simulator, database_url: str
) -> None:
    simulator.config.api_keys = None
    simulator.config.max_queued = 5
    simulator.config.processing_seconds = 0.3
    selfie = EXAMPLE_SELFIE.read_bytes()
    async with FakeTelegram() as telegram:
        cluster = Cluster(database_url, tmp_path, str(simulator.base_url), telegram, replicas=3)
        await cluster.start()
        try:
            await telegram.wait_for(lambda: telegram.webhook, timeout=30)
            requests: dict[int, list[int]] = {}
            for n in range(USERS):
                user_id = 7000 + n
                telegram.add_user(user_id, f"User {n}")
                requests[user_id] = []
            # Round by round: each user's next photo, as people keep sending.
            for _ in range(JOBS_PER_USER):
                for user_id in requests:
                    sent = telegram.send_photo(user_id, user_id, selfie, caption=COMMAND)
                    requests[user_id].append(sent["message_id"])

            async def delivered() -> bool:
                return all(result_counts(telegram, requests).values())

            async with asyncio.timeout(400):
                while not await delivered():
                    await asyncio.sleep(0.5)
            await asyncio.sleep(3)  # a duplicate would show by now
            counts = result_counts(telegram, requests)
        except BaseException:
            print(cluster.logs())
            raise
        finally:
            exits = await cluster.stop()
    assert exits == [0, 0, 0], cluster.logs()

    twice = {message: n for message, n in counts.items() if n != 1}
    assert not twice, (twice, cluster.logs())  # each exactly once
    statuses = Counter(status for path, status in simulator.requests if "/sim/" not in path)
    assert statuses[429] == 0, statuses
    tracks = Counter(str(job.track_id) for job in simulator.jobs.values())
    assert len(tracks) == USERS * JOBS_PER_USER and set(tracks.values()) == {1}
    states = dict(query(database_url, "SELECT state, count(*) FROM jobs GROUP BY state"))
    assert states == {"succeeded": USERS * JOBS_PER_USER}
    # The updates were spread over the three replicas.
    assert len([port for port, n in cluster.balancer.served.items() if n > 0]) == 3
