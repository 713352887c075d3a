"""A run of the cluster under chaos: replicas SIGKILLed and restarted at random while jobs go
through, the provider failing some jobs and answering some calls with 5xx. The counts that say
whether anything was lost or paid twice, for `bench/chaos.py` and its fast version in
`tests/test_chaos.py`.

Users send `/headshot` photos over Telegram (the fake Bot API, posting every update through the
balancer); a request is *answered* when the bot replied to it with its result ("Done: …") or with
its failure ("Sorry, that didn't work: …"). At the end, after the last kill, the cluster is left
to settle, then stopped cleanly, and the database, the provider and the chats are compared.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from backends.modelslab.simulator import Simulator, SimulatorConfig
from storage.database import Database
from storage.ledger import violations
from tests.cluster import Cluster, result_counts
from tests.conftest import EXAMPLE_SELFIE
from tests.databases import query
from tests.fake_telegram import FakeTelegram

FINAL_PREFIXES = ("Done:", "Sorry, that didn't work")
SERVER_ERRORS = (500, 502, 503)


@dataclass(frozen=True)
class ChaosPlan:
    jobs: int = 500
    users: int = 50
    replicas: int = 3
    kills: int = 20
    kill_every_seconds: float = 4.0
    failure_rate: float = 0.1  # jobs the provider ends as failed
    server_error_every_seconds: float = 0.5  # a 5xx answer to the next API call, this often
    processing_seconds: float = 1.0
    lease_seconds: float = 3.0
    settle_seconds: float = 120.0  # after the last kill, for every request to be answered
    seed: int = 1


@dataclass
class ChaosReport:
    plan: ChaosPlan
    seconds: float = 0.0
    kills: int = 0
    requests: int = 0
    answered_once: int = 0
    unanswered: list[tuple[int, int]] = field(default_factory=list)
    answered_twice_or_more: int = 0  # shown to the user more than once
    job_states: dict[str, int] = field(default_factory=dict)
    ledger_problems: list[str] = field(default_factory=list)
    provider_submits: int = 0
    duplicate_submits: int = 0  # provider jobs beyond the first for one of our jobs
    duplicate_submit_attempts: dict[int, int] = field(default_factory=dict)  # attempts -> jobs
    recorded_duplicate_deliveries: int = 0  # the bot's own count (audit log): certain ones
    recorded_repeated_deliveries: int = 0  # shown again after another process began showing it
    server_errors: int = 0
    rate_limited: int = 0
    exits: list[int | None] = field(default_factory=list)

    @property
    def unfinished(self) -> int:
        return sum(n for state, n in self.job_states.items() if state not in _TERMINAL)


_TERMINAL = ("succeeded", "failed", "cancelled")


async def run_chaos(plan: ChaosPlan, database_url: str, workdir: Path) -> ChaosReport:
    rng = random.Random(plan.seed)
    report = ChaosReport(plan)
    simulator = Simulator(
        SimulatorConfig(
            processing_seconds=plan.processing_seconds,
            failure_rate=plan.failure_rate,
            max_queued=5,
            seed=plan.seed,
        )
    )
    await simulator.start()
    started = time.monotonic()
    try:
        async with FakeTelegram() as telegram:
            cluster = Cluster(
                database_url,
                workdir,
                str(simulator.base_url),
                telegram,
                replicas=plan.replicas,
                settings={"JOB_LEASE_SECONDS": str(plan.lease_seconds)},
            )
            await cluster.start()
            try:
                await telegram.wait_for(lambda: telegram.webhook, timeout=60)
                requests = _send(telegram, plan)
                report.requests = sum(len(ids) for ids in requests.values())
                errors = asyncio.create_task(_server_errors(simulator, plan))
                try:
                    await _kill_and_restart(cluster, plan, rng, report)
                finally:
                    errors.cancel()
                await _settle(telegram, requests, database_url, plan)
            finally:
                report.exits = await cluster.stop()
            _count_answers(telegram, requests, report)
    finally:
        await simulator.stop()
    report.seconds = time.monotonic() - started
    _count_provider(simulator, report)
    await _count_database(database_url, report)
    return report


def _send(telegram: FakeTelegram, plan: ChaosPlan) -> dict[int, list[int]]:
    selfie = EXAMPLE_SELFIE.read_bytes()
    requests: dict[int, list[int]] = {}
    for n in range(plan.users):
        telegram.add_user(9000 + n, f"User {n}")
        requests[9000 + n] = []
    users = list(requests)
    for n in range(plan.jobs):
        user_id = users[n % len(users)]
        sent = telegram.send_photo(user_id, user_id, selfie, caption="/headshot corporate")
        requests[user_id].append(sent["message_id"])
    return requests


async def _server_errors(simulator: Simulator, plan: ChaosPlan) -> None:
    statuses = list(SERVER_ERRORS)
    while True:
        await asyncio.sleep(plan.server_error_every_seconds)
        simulator.config.inject.append(random.choice(statuses))


async def _kill_and_restart(
    cluster: Cluster, plan: ChaosPlan, rng: random.Random, report: ChaosReport
) -> None:
    for _ in range(plan.kills):
        await asyncio.sleep(plan.kill_every_seconds * rng.uniform(0.5, 1.5))
        replica = rng.choice(cluster.members)
        await replica.kill()
        report.kills += 1
        await cluster.restart(replica)


async def _settle(
    telegram: FakeTelegram, requests: dict[int, list[int]], database_url: str, plan: ChaosPlan
) -> None:
    """Wait until every request is answered and every job has ended, or the time is up."""
    deadline = time.monotonic() + plan.settle_seconds
    while time.monotonic() < deadline:
        answers = answer_counts(telegram, requests)
        states = dict(query(database_url, "SELECT state, count(*) FROM jobs GROUP BY state"))
        if all(answers.values()) and all(state in _TERMINAL for state in states):
            await asyncio.sleep(2)  # a late duplicate shows by now
            return
        await asyncio.sleep(0.5)


def answer_counts(
    telegram: FakeTelegram, requests: dict[int, list[int]]
) -> Counter[tuple[int, int]]:
    """How many final answers each request got: results, or failures."""
    return result_counts(telegram, requests, FINAL_PREFIXES)


def _count_answers(
    telegram: FakeTelegram, requests: dict[int, list[int]], report: ChaosReport
) -> None:
    answers = answer_counts(telegram, requests)
    report.answered_once = sum(1 for n in answers.values() if n == 1)
    report.answered_twice_or_more = sum(1 for n in answers.values() if n > 1)
    report.unanswered = sorted(key for key, n in answers.items() if n == 0)


def _count_provider(simulator: Simulator, report: ChaosReport) -> None:
    api = [status for path, status in simulator.requests if not path.startswith("/sim/")]
    report.server_errors = sum(1 for status in api if status >= 500)
    report.rate_limited = sum(1 for status in api if status == 429)
    per_job = Counter(str(job.track_id) for job in simulator.jobs.values())
    report.provider_submits = len(simulator.jobs)
    report.duplicate_submits = sum(n - 1 for n in per_job.values())


async def _count_database(database_url: str, report: ChaosReport) -> None:
    report.job_states = {
        str(state): int(n)
        for state, n in query(database_url, "SELECT state, count(*) FROM jobs GROUP BY state")
    }
    report.duplicate_submit_attempts = {
        int(attempts): int(n)
        for attempts, n in query(
            database_url, "SELECT attempts, count(*) FROM jobs WHERE attempts > 1 GROUP BY attempts"
        )
    }
    audit = dict(
        query(
            database_url,
            "SELECT action, count(*) FROM audit_log WHERE action IN "
            "('duplicate_delivery', 'delivery_repeated') GROUP BY action",
        )
    )
    report.recorded_duplicate_deliveries = int(audit.get("duplicate_delivery", 0))
    report.recorded_repeated_deliveries = int(audit.get("delivery_repeated", 0))
    db = Database(database_url)
    try:
        async with db.read() as conn:
            report.ledger_problems = await violations(conn)
    finally:
        await db.dispose()


def describe(report: ChaosReport) -> list[str]:
    """The report as the lines `bench/chaos.py` prints."""
    plan = report.plan
    states = ", ".join(f"{state} {n}" for state, n in sorted(report.job_states.items()))
    resent = sum(report.duplicate_submit_attempts.values())
    return [
        f"chaos: {plan.jobs} jobs from {plan.users} users on {plan.replicas} replicas; "
        f"{report.kills} SIGKILLs (every ~{plan.kill_every_seconds:.0f} s, each restarted); "
        f"provider failing {plan.failure_rate:.0%} of jobs, {report.server_errors} 5xx answers; "
        f"lease {plan.lease_seconds:.0f} s; {report.seconds:.0f} s in all",
        f"  jobs: {states}; not in a terminal state: {report.unfinished}",
        f"  ledger: {len(report.ledger_problems)} violation(s)"
        + (f" ({report.ledger_problems[:3]})" if report.ledger_problems else "")
        + " (no credit lost, none settled twice)" * (not report.ledger_problems),
        f"  requests: {report.requests}; answered once {report.answered_once}, "
        f"more than once {report.answered_twice_or_more}, never {len(report.unanswered)}",
        f"  provider: {report.provider_submits} submits for {sum(report.job_states.values())} "
        f"jobs, HTTP 429: {report.rate_limited}; duplicate submits: {report.duplicate_submits} "
        f"(a job the provider got twice: its replica was killed after sending it and before "
        f"recording the provider's id); jobs sent more than once: {resent} (after a 5xx, or "
        f"taken over from a killed replica before it recorded the send)",
        f"  duplicate deliveries: {report.answered_twice_or_more} seen in the chats; recorded "
        f"by the bot: {report.recorded_repeated_deliveries} results shown again after the "
        f"replica showing them was killed (or stalled past its lease) between taking them to "
        f"show and recording them shown (each may have been posted before it died), and "
        f"{report.recorded_duplicate_deliveries} found recorded by another replica already",
        f"  replica exits at the clean stop: {report.exits}",
    ]
