"""The cluster's scaling, fairness and take-over, measured in one run.

    python -m tests.postgres -- python bench/cluster.py

(`tests.postgres` starts a throw-away PostgreSQL from Debian's package and sets
TEST_POSTGRES_URL.) Every configuration runs real `headshot-bot run` processes behind a
round-robin balancer (tests/cluster.py), in Telegram webhook mode against the fake Bot API of
tests/ (40 webhook connections, one chat's updates in order, as Telegram does), with the
ModelsLab simulator (cap 5) in this process. Users send `/headshot` photos, all at the start,
heaviest user first (a Zipf split of --jobs over --users, as in bench/fairness.py).

1. Throughput and acknowledgement, the provider answering at once: one process on SQLite, then
   1, 2 and 3 replicas on PostgreSQL, the same schedule each time. Printed per configuration:
   jobs/s (from the first update posted to the last result sent), and the acknowledgement's
   p50/p99 (from an update's first POST to the bot's first reply to it).
2. Fairness, the provider taking --processing-seconds a job so that a line forms: the same
   schedule on 1 and on 3 replicas on PostgreSQL. Each user's last job against its fair share
   (position in the provider's order / the end of its round under ideal round-robin; 1 is
   exactly fair): min / median / max for each, and the largest relative difference between the
   two runs' figures.
3. Take-over: 3 replicas, jobs held at the provider; one replica holding jobs is SIGKILLed, and
   the seconds until every job it drove has moved on to another replica are printed, against
   JOB_LEASE_SECONDS (--lease).

This machine has 2 cores, shared by PostgreSQL, the simulator, the fake Telegram, the balancer
and every replica: the scaling is printed as it is, with the CPU time each part took, and the
Telegram calls made (Telegram allows a bot 30 messages a second, whatever the replicas: each
replica sends at its share).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import psutil

# `python bench/cluster.py` puts bench/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from backends.modelslab.simulator import Simulator, SimulatorConfig
from bench.fairness import zipf_split
from tests.cluster import Cluster, result_counts, wait_until
from tests.conftest import EXAMPLE_SELFIE
from tests.databases import fresh_postgres_database, query, sqlite_url
from tests.fake_telegram import FakeTelegram

COMMAND = "/headshot corporate"
STILL_HELD = (
    "SELECT count(*) FROM jobs WHERE lease_owner = :owner "
    "AND state NOT IN ('succeeded', 'failed', 'cancelled')"
)
FIRST_USER = 5000


@dataclass
class Figures:
    label: str
    jobs: int
    seconds: float
    acks: list[float]
    ratios: list[float]
    cpu: dict[str, float]
    telegram_calls: int  # Bot API calls the replicas made during the run (all of them paced)

    @property
    def jobs_per_second(self) -> float:
        return self.jobs / self.seconds

    def ack(self, quantile: float) -> float:
        ordered = sorted(self.acks)
        return ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]


@contextlib.asynccontextmanager
async def database(kind: str, workdir: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield sqlite_url(workdir / "headshot.db")
        return
    async with fresh_postgres_database() as url:
        yield url


async def run_once(
    label: str,
    kind: str,
    replicas: int,
    counts: list[int],
    processing_seconds: float,
    lease: float,
) -> Figures:
    selfie = EXAMPLE_SELFIE.read_bytes()
    simulator = Simulator(SimulatorConfig(processing_seconds=processing_seconds, max_queued=5))
    await simulator.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            async with database(kind, workdir) as url, FakeTelegram() as telegram:
                telegram.webhook_connections = 40
                cluster = Cluster(
                    url,
                    workdir,
                    str(simulator.base_url),
                    telegram,
                    replicas=replicas,
                    settings={"JOB_LEASE_SECONDS": str(lease), "LOG_LEVEL": "WARNING"},
                )
                await cluster.start()
                try:
                    await telegram.wait_for(lambda: telegram.webhook, timeout=60)
                    cpu_before = _cpu(cluster)
                    requests = _send(telegram, selfie, counts)
                    total = sum(counts)
                    try:
                        await wait_until(
                            lambda: all(result_counts(telegram, requests).values()), within=600
                        )
                    except TimeoutError:
                        answered = result_counts(telegram, requests)
                        print(
                            f"  {label}: {sum(1 for n in answered.values() if not n)} of "
                            f"{len(answered)} requests unanswered; the replicas' logs:"
                        )
                        print(cluster.logs())
                        raise
                    cpu = {k: v - cpu_before.get(k, 0.0) for k, v in _cpu(cluster).items()}
                    owners = dict(query(url, "SELECT id, user_id FROM jobs"))
                finally:
                    await cluster.stop()
    finally:
        await simulator.stop()
    started = min(telegram.first_posts.values())
    finished = max(call.at for call in telegram.calls if call.method == "sendPhoto")
    acks = [
        telegram.first_replies[key] - posted
        for key, posted in telegram.first_posts.items()
        if key in telegram.first_replies
    ]
    order = [str(job.track_id) for job in simulator.jobs.values()]  # the provider's order
    calls = sum(1 for call in telegram.calls if started <= call.at <= finished)
    return Figures(
        label, total, finished - started, acks, _fair_shares(counts, owners, order), cpu, calls
    )


def _send(telegram: FakeTelegram, selfie: bytes, counts: list[int]) -> dict[int, list[int]]:
    requests: dict[int, list[int]] = {}
    for user, n in enumerate(counts):  # heaviest first: the worst order for the light users
        user_id = FIRST_USER + user
        telegram.add_user(user_id, f"User {user}")
        requests[user_id] = [
            telegram.send_photo(user_id, user_id, selfie, caption=COMMAND)["message_id"]
            for _ in range(n)
        ]
    return requests


def _fair_shares(counts: list[int], owners: dict[str, int], order: list[str]) -> list[float]:
    """Per user: the provider position of their last job / the end of their round under ideal
    round-robin (sum over users v of min(n_v, n_u))."""
    last: dict[int, int] = {}
    for position, job_id in enumerate(order, 1):
        last[owners[job_id]] = position
    demand = {user: n for user, n in _demand(owners).items()}
    ratios = []
    for user, n in demand.items():
        ideal = sum(min(other, n) for other in demand.values())
        ratios.append(last[user] / ideal)
    assert sorted(demand.values(), reverse=True) == sorted(counts, reverse=True)
    return ratios


def _demand(owners: dict[str, int]) -> dict[int, int]:
    demand: dict[int, int] = {}
    for user in owners.values():
        demand[user] = demand.get(user, 0) + 1
    return demand


def _cpu(cluster: Cluster) -> dict[str, float]:
    """CPU seconds so far: each replica, PostgreSQL's processes, and this process."""
    seconds: dict[str, float] = {}
    for replica in cluster.members:
        if replica.process is not None and replica.running:
            times = psutil.Process(replica.process.pid).cpu_times()
            seconds[replica.name] = times.user + times.system
    postgres = 0.0
    for process in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if process.info["name"] == "postgres":
                times = process.cpu_times()
                postgres += times.user + times.system
    seconds["postgres"] = postgres
    here = psutil.Process().cpu_times()
    seconds["harness (simulator, fake Telegram, balancer)"] = here.user + here.system
    return seconds


async def take_over(lease: float) -> tuple[float, int]:
    """Seconds from SIGKILLing a replica that holds jobs until each of them is held by another
    replica (or has ended); and how many it held."""
    simulator = Simulator(SimulatorConfig(processing_seconds=3600, max_queued=5))
    await simulator.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            async with fresh_postgres_database() as url, FakeTelegram() as telegram:
                cluster = Cluster(
                    url,
                    workdir,
                    str(simulator.base_url),
                    telegram,
                    replicas=3,
                    settings={"JOB_LEASE_SECONDS": str(lease), "LOG_LEVEL": "WARNING"},
                )
                await cluster.start()
                try:
                    await telegram.wait_for(lambda: telegram.webhook, timeout=60)
                    _send(telegram, EXAMPLE_SELFIE.read_bytes(), [3] * 8)
                    await wait_until(
                        lambda: len(query(url, "SELECT id FROM jobs")) == 24, within=120
                    )
                    owners = dict(
                        query(url, "SELECT lease_owner, count(*) FROM jobs GROUP BY lease_owner")
                    )
                    victim = next(
                        replica
                        for replica in cluster.members
                        if any(f":{replica.process.pid}:" in str(o) for o in owners)  # type: ignore[union-attr]
                    )
                    assert victim.process is not None
                    owner = next(o for o in owners if f":{victim.process.pid}:" in str(o))
                    held = int(owners[owner])
                    await victim.kill()
                    killed = time.monotonic()
                    await wait_until(
                        lambda: not query(url, STILL_HELD, owner=owner)[0][0],
                        within=lease * 10 + 60,
                        every=0.05,
                    )
                    return time.monotonic() - killed, held
                finally:
                    await cluster.stop()
    finally:
        await simulator.stop()


def _spread(ratios: list[float]) -> tuple[float, float, float]:
    return min(ratios), statistics.median(ratios), max(ratios)


async def main(args: argparse.Namespace) -> None:
    counts = zipf_split(args.jobs, args.users)
    print(
        f"schedule: {sum(counts)} jobs from {len(counts)} users (per user: min {min(counts)}, "
        f"median {statistics.median(counts):g}, max {max(counts)}), all sent at once, heaviest "
        f"user first; provider cap 5"
    )
    print("1. throughput and acknowledgement (the provider answers at once)")
    configurations = [("SQLite, 1 process", "sqlite", 1)] + [
        (f"PostgreSQL, {n} replica{'s' * (n > 1)}", "postgresql", n) for n in (1, 2, 3)
    ]
    for label, kind, replicas in configurations:
        figures = await run_once(label, kind, replicas, counts, 0.0, args.lease)
        cpu = ", ".join(f"{name} {seconds:.1f}" for name, seconds in figures.cpu.items())
        calls_per_second = figures.telegram_calls / figures.seconds
        print(
            f"  {label:<24} {figures.jobs_per_second:5.1f} jobs/s; ack p50 "
            f"{figures.ack(0.5) * 1000:6.0f} ms, p99 {figures.ack(0.99) * 1000:6.0f} ms; "
            f"Telegram calls {figures.telegram_calls / figures.jobs:.1f} a job, "
            f"{calls_per_second:.1f}/s (the cluster's share: 30/s); CPU s: {cpu}"
        )
    print(f"2. fairness (the provider takes {args.processing_seconds:g} s a job: a line forms)")
    spreads = []
    for replicas in (1, 3):
        figures = await run_once(
            f"{replicas}", "postgresql", replicas, counts, args.processing_seconds, args.lease
        )
        low, mid, high = _spread(figures.ratios)
        spreads.append((low, mid, high))
        print(
            f"  {replicas} replica{'s' * (replicas > 1)}: last job's position / fair share: "
            f"min {low:.2f}, median {mid:.2f}, max {high:.2f} ({figures.jobs_per_second:.1f} "
            f"jobs/s)"
        )
    difference = max(abs(a - b) / b for a, b in zip(spreads[1], spreads[0], strict=True))
    print(f"  largest relative difference, 3 replicas against 1: {difference:.1%}")
    seconds, held = await take_over(args.lease)
    print(
        f"3. take-over: a replica holding {held} jobs SIGKILLed; they moved on after "
        f"{seconds:.1f} s (JOB_LEASE_SECONDS {args.lease:g}: the lease runs out, then the next "
        f"check, every lease/3, takes them)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--processing-seconds", type=float, default=0.5)
    parser.add_argument("--lease", type=float, default=10.0)
    asyncio.run(main(parser.parse_args()))
