"""`/metrics` during a real run: the service, the simulator over HTTP and the real discord.py
against the fake Discord. What a scrape says must equal what happened, and no label value may
come from what a user typed."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from bot.commands import Actor, CommandRequest
from bot.metrics import labels
from tests.cluster import free_port
from tests.conftest import AppFactory, make_image
from tests.test_discord import World, result_of

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

# The label values each label may take (bot/metrics/labels.py), "other" included.
ALLOWED = {
    "operation": labels.OPERATIONS,
    "backend": labels.BACKENDS,
    "outcome": (*labels.OUTCOMES, "done", "failed"),
    "stage": labels.STAGES,
    "platform": labels.PLATFORMS,
    "kind": labels.PROVIDER_ERRORS,
    "movement": labels.CREDIT_MOVES,
    "result": labels.IDENTITY_RESULTS,
    "state": labels.WORKER_STATES,
}
PEOPLE = (4101, 4102, 4103, 4104)
HOSTILE = 'x"} 1\nheadshot_jobs_total{operation="pwned'


async def scrape(url: str, **headers: str) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
        return answer.status, await answer.text()


def samples(exposition: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: Samples, name: str, **label_values: str) -> float:
    return found[(name, tuple(sorted(label_values.items())))]


async def ledger(discord_world: World, kind: str) -> int:
    assert discord_world.app is not None
    async with discord_world.app.db.read() as conn:
        query = text("SELECT coalesce(sum(amount), 0) FROM credit_ledger WHERE kind = :kind")
        return int((await conn.execute(query, {"kind": kind})).scalar_one())


async def test_a_scrape_counts_what_happened_in_a_real_run(discord_world: World) -> None:
    await discord_world.start()
    app = discord_world.app
    assert app is not None
    fake, simulator = discord_world.fake, discord_world.simulator
    before = samples((await scrape(f"{app.base_url}/metrics"))[1])
    assert (
        value(
            before,
            "headshot_jobs_total",
            operation="headshot",
            backend="modelslab",
            outcome="succeeded",
        )
        == 0
    )

    # Three people (a person may have two jobs unfinished at once).
    succeeded = [
        await discord_world.headshot(user_id=PEOPLE[0]),
        await discord_world.headshot(user_id=PEOPLE[1], samples=2),
        await discord_world.headshot(user_id=PEOPLE[2]),
    ]
    for interaction in succeeded:
        await result_of(fake, interaction)
    simulator.config.failure_rate = 1.0
    failing = await discord_world.headshot(user_id=PEOPLE[3], samples=2)
    await fake.wait_for(
        lambda: (
            failing.original is not None
            and failing.original.content.startswith("Sorry, that didn't work:")
        ),
        timeout=30,
    )
    await discord_world.no_deliveries_owed()
    await app.engine.wait_idle()

    def sent_to_discord() -> int:
        return sum(
            1
            for method, path in fake.requests
            if method in ("POST", "PATCH") and "/messages" in path
        )

    # A message is counted once Discord has answered it: one the fake has just received may be
    # a moment from its count. The scrape is taken once the two agree (or 5 s have passed).
    deadline = asyncio.get_running_loop().time() + 5
    while True:
        status, exposition = await scrape(f"{app.base_url}/metrics")
        found = samples(exposition)
        counted = value(found, "headshot_chat_messages_sent_total", platform="discord")
        if counted == sent_to_discord() or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert status == 200
    jobs = 4
    assert value(found, "headshot_jobs_queued_total", operation="headshot") == jobs
    ended = {"operation": "headshot", "backend": "modelslab"}
    assert value(found, "headshot_jobs_total", **ended, outcome="succeeded") == 3
    assert value(found, "headshot_jobs_total", **ended, outcome="failed") == 1
    stage = "headshot_job_stage_seconds_count"
    assert value(found, stage, stage="queue_wait") == jobs
    assert value(found, stage, stage="provider") == 3  # the failed job made no result
    assert value(found, stage, stage="rehost") == 3
    assert value(found, stage, stage="identity") == 0  # the gate is off in the tests

    # Credits: equal to the ledger's own rows.
    assert value(found, "headshot_credits_total", movement="reserved") == 6
    assert value(found, "headshot_credits_total", movement="reserved") == await ledger(
        discord_world, "reserve"
    )
    assert value(found, "headshot_credits_total", movement="committed") == 4
    assert value(found, "headshot_credits_total", movement="committed") == await ledger(
        discord_world, "commit"
    )
    assert value(found, "headshot_credits_total", movement="released") == 2
    assert value(found, "headshot_credits_total", movement="released") == await ledger(
        discord_world, "release"
    )

    # The generator: every call the simulator answered, well or with the failure it reported.
    answered = [path for path, code in simulator.requests if path.startswith("/api/")]
    errors = "headshot_provider_errors_total"
    assert value(found, errors, kind="generation_failed") == 1
    assert sum(v for (name, _), v in found.items() if name == errors) == 1
    assert value(found, "headshot_provider_calls_total") == len(answered) - 1
    # Discord: each interaction in, acknowledged once; each message the bot posted or edited.
    assert value(found, "headshot_chat_received_total", platform="discord") == jobs
    acks = "headshot_chat_acknowledgement_seconds_count"
    assert value(found, acks, platform="discord") == jobs
    assert (
        value(found, "headshot_chat_acknowledgement_seconds_bucket", platform="discord", le="3.0")
        == jobs
    )
    assert value(found, "headshot_chat_delivery_seconds_count", platform="discord") == jobs
    messages = [
        (method, path)
        for method, path in fake.requests
        if method in ("POST", "PATCH") and "/messages" in path
    ]
    assert value(found, "headshot_chat_messages_sent_total", platform="discord") == len(messages)
    assert value(found, "headshot_queue_depth") == 0
    assert value(found, "headshot_active_jobs") == 0
    assert value(found, "headshot_provider_slots_used") == 0
    assert value(found, "headshot_provider_slots_cap") == app.settings.modelslab_max_queued
    assert value(found, "headshot_provider_degraded") == 0


async def test_no_label_value_comes_from_what_a_user_typed(discord_world: World) -> None:
    await discord_world.start()
    app = discord_world.app
    assert app is not None
    done = await discord_world.headshot(prompt=HOSTILE)
    await result_of(discord_world.fake, done)
    # Discord offers styles as choices; another way in (Telegram, the terminal) does not.
    refused = await app.commands.handle(
        CommandRequest(
            Actor("telegram", "4201"),
            "headshot",
            {"style": HOSTILE, "prompt": HOSTILE, "selfie": make_image()},
        )
    )
    assert refused.refused
    await discord_world.no_deliveries_owed()
    status, exposition = await scrape(f"{app.base_url}/metrics")
    assert status == 200
    assert "pwned" not in exposition and HOSTILE not in exposition
    found = samples(exposition)
    for (name, label_values), _ in found.items():
        for label, given in label_values:
            if label == "le" or label == "worker":
                continue
            assert label in ALLOWED, (name, label)
            assert given in (*ALLOWED[label], labels.OTHER), (name, label, given)
    assert value(found, "headshot_jobs_queued_total", operation="headshot") == 1


async def test_metrics_behind_a_token_and_on_their_own_port(make_app: AppFactory) -> None:
    app = await make_app(metrics_token="scrape-secret-1234", metrics_port=free_port())
    assert app.metrics_url is not None
    assert (await scrape(f"{app.base_url}/metrics"))[0] == 404  # not on the web server's port
    status, body = await scrape(app.metrics_url)
    assert status == 401 and "scrape-secret-1234" not in body
    assert (await scrape(app.metrics_url, Authorization="Bearer wrong"))[0] == 401
    status, body = await scrape(app.metrics_url, Authorization="Bearer scrape-secret-1234")
    assert status == 200 and "headshot_jobs_queued_total" in body


async def test_metrics_can_be_turned_off(make_app: AppFactory) -> None:
    app = await make_app(metrics=False)
    assert (await scrape(f"{app.base_url}/metrics"))[0] == 404
    assert (await scrape(f"{app.base_url}/readyz"))[0] == 200
