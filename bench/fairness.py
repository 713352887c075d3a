"""Fairness and memory of the waiting line: many users, unequal demand, a small provider cap.

    python bench/fairness.py --jobs 1000 --users 50 --cap 5 --processing-seconds 0.05 \
        --queued 10000

Every job goes through the command layer (`/headshot` with an attached 256×320 selfie) and is
followed as an adapter follows it (`commands.follow`, one task per job); the ModelsLab simulator
runs in its own process with the same cap as the bot. Each phase runs in a child process of its
own, so that one phase's memory does not show in the other's RSS (`--phase` runs just one).

Phase 1, fairness: --users users with unequal demand summing to --jobs (a Zipf split: the k-th
user asks for about 1/k of the jobs, everyone for at least one; printed as min / median / max
jobs per user). The requests are sent --users at a time in the order where first-come-first-
served is at its worst for light users: all of the heaviest user's first, then the next user's,
and so on. The command layer queues more slowly (tens of jobs/s here) than a provider with cap 5
and --processing-seconds 0.05 drains (~100 jobs/s), so if jobs went straight on no backlog would
form and any order would look fair: the jobs are held at the dispatcher's door until every one
is queued, then let in, in the order they reached it (`--live` lets them in at once instead).
A job is *dispatched* when the dispatcher gives it a provider slot: `Dispatcher.acquire` is
wrapped to hold the backlog and to record when each job entered and left it. Printed:

* queueing: how long the command layer took to queue every job, and how many were dispatched
  meanwhile (0 unless --live);
* throughput: jobs per second from the release of the backlog (--live: the first request) to the
  last `Completed` event;
* each user's last job against the fair share: under ideal round-robin with everything queued at
  once, user u's last job goes out by dispatch position ``ideal_u = sum over users v of
  min(n_v, n_u)`` (the end of round n_u). ``ratio = actual position / ideal_u``: 1 is exactly
  fair, above 1 later than fair. Min / median / max over users, the same for first-come-first-
  served (the order the jobs reached the dispatcher) for comparison, and the 3 worst users;
* the median wait for a slot (from entering the dispatcher, or the release, to dispatch) of
  light users (n_u ≤ the median demand) and of heavy users (the rest);
* how many position updates (`Queued` events) the followers received;
* provider-busy retries (the bot's own cap should keep them at 0), the jobs that completed, and
  the credit ledger's check (no violations).

Phase 2, memory: a fresh service against a simulator that holds every job (an hour each), so
--cap jobs sit at the provider and the rest wait in the dispatcher. --queued jobs from --users
users (an even split, --users requests at a time, round-robin), each followed. Printed: how long
queueing took, how many jobs wait in the dispatcher, how many position updates (`Queued` events)
the followers received, the process's RSS after start-up and with everything queued, and its
peak RSS (aim: ≤ 250 MB); then how long cancelling the followers and stopping the service took
(the jobs stay in the throw-away database).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bot.app import HeadshotApp, Overrides
from bot.commands.context import Actor, CommandRequest
from bot.config import Settings
from bot.jobs.engine import EngineTimings
from bot.jobs.events import Completed, JobEvent, Progress, Queued
from bot.logs import setup_logging

# `python bench/fairness.py` puts bench/ on sys.path, not the repository root, and `bench` is not
# an installed package: add the root so that bench/throughput.py's helpers can be shared.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throughput import _selfie, _wait_until_listening, simulator_process
from bench.throughput import bench_settings as throughput_settings

PLATFORM = "bench"
PROMPT = "corporate headshot"
HOLD_SECONDS = 3600.0  # phase 2: the simulator finishes nothing while we measure
MiB = 1024 * 1024


# ---- set-up ---------------------------------------------------------------------------------


def bench_settings(workdir: Path, sim_port: int, cap: int, per_user: int) -> Settings:
    settings = throughput_settings(
        workdir, sim_port, cap, selfie_retention_seconds=0, log_level="WARNING"
    )
    # Past the validated limits on purpose (daily_quota ≤ 10,000, max_active_per_user ≤ 100): a
    # heavy user here has hundreds of jobs in the queue at once, and none may be refused.
    limit = max(per_user, 1)
    return settings.model_copy(update={"daily_quota": limit, "max_active_per_user": limit})


def bench_app(settings: Settings) -> HeadshotApp:
    # Webhooks drive completion (the simulator sends them within a 20 ms tick); polls are only
    # the fallback.
    timings = EngineTimings(min_poll_seconds=5.0, max_poll_seconds=5.0)
    return HeadshotApp(settings, Overrides(timings=timings, local_webhooks=True))


def zipf_split(total: int, users: int, exponent: float = 1.0) -> list[int]:
    """`total` jobs over `users` users: one each, the rest in proportion to 1/rank^exponent
    (largest remainders), heaviest first. Deterministic."""
    if total < users:
        raise SystemExit(f"--jobs ({total}) must be at least --users ({users})")
    weights = [1 / rank**exponent for rank in range(1, users + 1)]
    shares = [w * (total - users) / sum(weights) for w in weights]
    counts = [1 + int(share) for share in shares]
    by_remainder = sorted(range(users), key=lambda i: (int(shares[i]) - shares[i], i))
    for index in by_remainder[: total - sum(counts)]:
        counts[index] += 1
    return counts


def even_split(total: int, users: int) -> list[int]:
    share, extra = divmod(total, users)
    return [share + (i < extra) for i in range(users)]


def actor(index: int) -> Actor:
    return Actor(PLATFORM, f"user{index:03d}")  # a DM: fairness goes by user alone


def rss_mib() -> float:
    return psutil.Process().memory_info().rss / MiB


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


@dataclass
class Submitter:
    """Sends `/headshot` requests, `concurrency` at a time, and follows every job it queues."""

    app: HeadshotApp
    expected: int  # jobs to be queued: `all_following` is set once each has had its first event
    options: dict[str, Any] = field(default_factory=dict)
    owner: dict[str, int] = field(default_factory=dict)  # job id -> user index
    followers: list[asyncio.Task[JobEvent | None]] = field(default_factory=list)
    finished_at: dict[str, float] = field(default_factory=dict)
    position_updates: int = 0
    busy_retries: int = 0
    first_events: int = 0
    all_following: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.options = {"selfie": _selfie(), "prompt": PROMPT, "width": 256, "height": 320}

    async def submit(self, order: list[int], concurrency: int) -> None:
        """One request per entry of `order` (a user index), sent in that order."""
        requests = iter(order)

        async def worker() -> None:
            for index in requests:
                await self.request(index)

        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def request(self, index: int) -> None:
        reply = await self.app.commands.handle(
            CommandRequest(actor(index), "headshot", self.options)
        )
        if reply.job_id is None:
            raise RuntimeError(f"user{index:03d} was refused: {reply.text}")
        self.owner[reply.job_id] = index
        self.followers.append(asyncio.create_task(self.follow(reply.job_id)))

    async def follow(self, job_id: str) -> JobEvent | None:
        """What an adapter does with a queued job: render each event until the final one."""
        final: JobEvent | None = None
        async for event in self.app.commands.follow(job_id):
            if final is None:
                self.first_events += 1
                if self.first_events == self.expected:
                    self.all_following.set()
            if isinstance(event, Queued):
                self.position_updates += 1
            elif isinstance(event, Progress) and event.stage == "retrying":
                self.busy_retries += 1
            final = event
        self.finished_at[job_id] = time.perf_counter()
        return final


def interleaved(counts: list[int]) -> list[int]:
    """Every user's first request, then every user's second, and so on."""
    return [user for k in range(max(counts)) for user, n in enumerate(counts) if k < n]


# ---- phase 1: fairness and throughput -------------------------------------------------------


async def fairness(args: argparse.Namespace) -> None:
    counts = zipf_split(args.jobs, args.users)
    with (
        tempfile.TemporaryDirectory() as tmp,
        simulator_process(args.cap, args.processing_seconds) as sim_port,
    ):
        await _wait_until_listening(sim_port)
        settings = bench_settings(Path(tmp), sim_port, args.cap, max(counts))
        async with bench_app(settings) as app:
            await _fairness(app, counts, args)


async def _fairness(app: HeadshotApp, counts: list[int], args: argparse.Namespace) -> None:
    entered: dict[str, float] = {}  # job id -> when it reached the dispatcher; in that order
    dispatched_at: dict[str, float] = {}  # job id -> when it was given a slot; in that order
    backlog = asyncio.Event()  # set: jobs go on into the dispatcher
    if args.live:
        backlog.set()
    dispatcher = app.engine.dispatcher
    acquire = dispatcher.acquire

    async def recording_acquire(job_id: str, *rest: Any, **keys: Any) -> None:
        entered.setdefault(job_id, time.perf_counter())
        await backlog.wait()
        await acquire(job_id, *rest, **keys)
        dispatched_at[job_id] = time.perf_counter()

    dispatcher.acquire = recording_acquire  # type: ignore[method-assign]

    jobs = sum(counts)
    submitter = Submitter(app, expected=jobs)
    heavy_first = [user for user, n in enumerate(counts) for _ in range(n)]
    started = time.perf_counter()
    await submitter.submit(heavy_first, concurrency=len(counts))
    queued_in = time.perf_counter() - started
    await asyncio.sleep(0)  # the last followers start, and subscribe, before the release
    dispatched_while_queueing = len(dispatched_at)
    released = time.perf_counter()
    backlog.set()
    finals = await asyncio.gather(*submitter.followers)
    await app.engine.wait_idle()
    completed = sum(isinstance(final, Completed) for final in finals)
    problems = await app.accounts.ledger_violations()

    demand = statistics.median(counts)
    print(
        f"phase 1, fairness: {jobs} jobs from {len(counts)} users (jobs per user: min "
        f"{min(counts)}, median {demand:g}, max {max(counts)}), cap {args.cap}, "
        f"{args.processing_seconds:g} s per job at the provider"
        + ("; live (no backlog)" if args.live else "")
    )
    print(
        f"  queueing: {queued_in:.1f} s ({jobs / queued_in:.0f} jobs/s), {len(counts)} requests at "
        f"a time, heaviest user's first; {dispatched_while_queueing} dispatched meanwhile"
    )
    since = started if args.live else released
    elapsed = max(submitter.finished_at.values()) - since
    what = "from the first request" if args.live else "from the release of the backlog"
    print(
        f"  throughput: {jobs / elapsed:.1f} jobs/s {what} to the last Completed ({elapsed:.1f} s)"
    )

    dispatch_order = list(dispatched_at)
    fair = _fair_share(counts, submitter.owner, dispatch_order)
    fifo = _fair_share(counts, submitter.owner, list(entered))
    print(f"  last job's dispatch position / fair share: {_spread(fair)}")
    print(f"    first-come-first-served (the order they reached the queue): {_spread(fifo)}")
    worst = sorted(fair, key=lambda share: share.ratio, reverse=True)[:3]
    print("  worst users: " + "; ".join(share.describe() for share in worst))

    waits: dict[bool, list[float]] = {True: [], False: []}
    for job_id, user in submitter.owner.items():
        wait = dispatched_at[job_id] - max(entered[job_id], since)
        waits[counts[user] <= demand].append(wait)
    print(
        f"  median wait for a slot: light users (≤ {demand:g} jobs) "
        f"{_median(waits[True]):.2f} s, heavy users {_median(waits[False]):.2f} s"
    )
    print(f"  position updates received by followers: {submitter.position_updates}")
    print(
        f"  provider-busy retries: {submitter.busy_retries}; completed: {completed}/{jobs}; "
        f"ledger violations: {len(problems)}" + (f" ({problems[:3]})" if problems else "")
    )
    if completed != jobs or problems:
        raise SystemExit(1)


@dataclass(frozen=True)
class FairShare:
    user: int
    jobs: int
    ideal: int
    actual: int

    @property
    def ratio(self) -> float:
        return self.actual / self.ideal

    def describe(self) -> str:
        return (
            f"user{self.user:03d} (n={self.jobs}, ideal {self.ideal}, "
            f"actual {self.actual}: {self.ratio:.2f})"
        )


def _fair_share(counts: list[int], owner: dict[str, int], order: list[str]) -> list[FairShare]:
    """Each user's last position in `order` against the ideal round-robin position."""
    last: dict[int, int] = {}
    for position, job_id in enumerate(order, start=1):
        last[owner[job_id]] = position
    return [
        FairShare(user, n, sum(min(m, n) for m in counts), last[user])
        for user, n in enumerate(counts)
    ]


def _spread(shares: list[FairShare]) -> str:
    ratios = [share.ratio for share in shares]
    return f"min {min(ratios):.2f}, median {statistics.median(ratios):.2f}, max {max(ratios):.2f}"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ---- phase 2: memory with everything queued ------------------------------------------------


async def memory(args: argparse.Namespace) -> None:
    counts = even_split(args.queued, args.users)
    with (
        tempfile.TemporaryDirectory() as tmp,
        simulator_process(args.cap, HOLD_SECONDS) as sim_port,
    ):
        await _wait_until_listening(sim_port)
        settings = bench_settings(Path(tmp), sim_port, args.cap, max(counts))
        app = bench_app(settings)
        async with app:
            submitter = await _memory(app, counts, args)
            # An adapter shutting down stops rendering first: cancel the followers, then the
            # service (which leaves the jobs queued in the database).
            started = time.perf_counter()
            for task in submitter.followers:
                task.cancel()
            await asyncio.gather(*submitter.followers, return_exceptions=True)
            cancelled_in = time.perf_counter() - started
            started = time.perf_counter()
        stopped_in = time.perf_counter() - started
    print(
        f"  shutdown: followers cancelled in {cancelled_in:.2f} s, "
        f"service stopped in {stopped_in:.2f} s"
    )


async def _memory(app: HeadshotApp, counts: list[int], args: argparse.Namespace) -> Submitter:
    submitter = Submitter(app, expected=sum(counts))
    baseline = rss_mib()
    started = time.perf_counter()
    await submitter.submit(interleaved(counts), concurrency=len(counts))
    await submitter.all_following.wait()
    queued_in = time.perf_counter() - started
    # Let the followers take the position updates already sent to them.
    for _ in range(10):
        await asyncio.sleep(0)
    jobs = len(submitter.owner)
    dispatcher = app.engine.dispatcher
    print(
        f"phase 2, memory: {jobs} jobs from {len(counts)} users, each followed; cap "
        f"{args.cap}, the provider holds every job"
    )
    print(f"  queueing: {queued_in:.1f} s ({jobs / queued_in:.0f} jobs/s)")
    print(
        f"  waiting in the dispatcher: {await dispatcher.waiting_count()} "
        f"(at the provider: {await dispatcher.in_flight()}); position updates received by "
        f"followers: {submitter.position_updates}"
    )
    current, peak = rss_mib(), peak_rss_mib()
    print(
        f"  RSS: {baseline:.1f} MiB after start-up, {current:.1f} MiB with {jobs} queued; "
        f"peak {peak:.1f} MiB = {peak * MiB / 1e6:.0f} MB (aim: ≤ 250 MB)"
    )
    return submitter


# ---- entry point ----------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000, help="phase 1: jobs in all")
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--cap", type=int, default=5, help="MODELSLAB_MAX_QUEUED, sim's cap")
    parser.add_argument(
        "--processing-seconds", type=float, default=0.05, help="phase 1: provider time per job"
    )
    parser.add_argument("--queued", type=int, default=10_000, help="phase 2: jobs queued")
    parser.add_argument(
        "--live",
        action="store_true",
        help="phase 1: let jobs into the dispatcher as they are queued (no backlog is formed "
        "when the command layer queues more slowly than the provider drains)",
    )
    parser.add_argument("--phase", choices=("all", "fairness", "memory"), default="all")
    args = parser.parse_args()
    if min(args.jobs, args.users, args.cap, args.queued) < 1 or args.processing_seconds < 0:
        parser.error("--jobs, --users, --cap, --queued: at least 1; --processing-seconds: ≥ 0")
    if args.phase == "all":
        for phase in ("fairness", "memory"):
            command = [sys.executable, __file__, *sys.argv[1:], "--phase", phase]
            code = subprocess.run(command, check=False).returncode
            if code:
                raise SystemExit(code)
        return
    setup_logging("WARNING", [])
    asyncio.run(fairness(args) if args.phase == "fairness" else memory(args))


if __name__ == "__main__":
    main()
