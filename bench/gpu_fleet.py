"""The GPU fleet's throughput and the overhead its queue adds per job, on the CPU with the tests'
tiny models (no download).

    python -m tests.postgres -- python bench/gpu_fleet.py --jobs 30

(`tests.postgres` starts a throw-away PostgreSQL from Debian's package and sets
TEST_POSTGRES_URL.) For each image store (the disk store in a shared folder, then S3 on moto's
server in a process of its own), a fresh database gets one real `headshot-bot gpu-worker`
process, then a second, then a third (tests/fleet.py; capacity 1, headshot, 64x96 images), and a
replica of the bot in this process (BACKEND=local: the FleetBackend) is sent --jobs headshots at
once for each count. Printed per run:

- jobs/s, from the first request to the last job succeeded (after one untimed job per worker,
  which warms a new worker up);
- the queue's overhead per job, p50 and p99 (the p99 of 30 jobs is nearly their worst):
  (a) dispatch -> start: from the dispatcher granting the job a slot (jobs.dispatched_at) to a
      worker taking it from the queue (Procrastinate's 'started' event); "of it queued": from
      the job's deferral on the queue ('deferred') to that start, the part Procrastinate's
      LISTEN/NOTIFY and fetch take, the rest being the replica's submit;
  (b) result -> rehosted: from the worker's results row (gpu_results.finished_at, written once
      its images are in the store) to the job succeeded on the replica (jobs.finished_at), which
      covers the NOTIFY, the replica's fetch, the re-host (the store's `exists`) and the commit;

and at the end, per run, each job's (a) + (b) as p50 and p99: the aim is a p99 under 50 ms.

Procrastinate deletes a job's row, and with it its events, when the job ends: a trigger that
only this benchmark adds copies the 'deferred' and 'started' events aside. Every timestamp is
one machine's clock (the database's and the replica's).

This machine's cores are shared by PostgreSQL, the replica and every worker: the scaling is
printed as it is, with the number of cores.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

# `python bench/gpu_fleet.py` puts bench/ on sys.path, not the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.app import HeadshotApp, Overrides
from bot.config import load_settings
from bot.generation import GenerationRequest
from bot.jobs.engine import EngineTimings
from bot.jobs.events import Completed, Failed, JobEvent
from bot.jobs.rehost import RetryPolicy
from storage.migrate import upgrade
from tests.conftest import EXAMPLE_SELFIE
from tests.databases import execute, fresh_postgres_database, query
from tests.fleet import Fleet, bot_settings, fleet_database

TIMINGS = EngineTimings(
    min_poll_seconds=0.05,
    max_poll_seconds=0.5,
    job_timeout_seconds=600,
    retry=RetryPolicy(base_seconds=0.01, cap_seconds=0.1),
)
S3_REGION = "us-east-1"
S3_KEY = "bench-access-key"
S3_SECRET = "bench-secret-key-0123456789"  # noqa: S105 (moto accepts any)

# Procrastinate deletes a finished job with its events: keep the 'deferred' and 'started' ones
# aside. The function runs as the database's owner (the workers' role may not write this table).
KEEP_EVENTS = """
CREATE TABLE bench_events (
    queue_id bigint NOT NULL, type text NOT NULL, at timestamptz NOT NULL,
    PRIMARY KEY (queue_id, type)
);
CREATE FUNCTION bench_keep_event() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER AS $$
BEGIN
    INSERT INTO bench_events (queue_id, type, at) VALUES (NEW.job_id, NEW.type::text, NEW.at)
        ON CONFLICT (queue_id, type) DO UPDATE SET at = EXCLUDED.at;
    RETURN NEW;
END;
$$;
CREATE TRIGGER bench_keep_event AFTER INSERT ON procrastinate_events
    FOR EACH ROW WHEN (NEW.type IN ('deferred', 'started')) EXECUTE FUNCTION bench_keep_event();
"""
# Per job of a run: seconds from dispatch to start, of which in the queue (deferred to started),
# and from the results row to succeeded.
OVERHEAD = """
SELECT
    extract(epoch FROM s.at - j.dispatched_at),
    extract(epoch FROM s.at - d.at),
    extract(epoch FROM j.finished_at - r.finished_at)
FROM jobs j
JOIN gpu_results r ON r.job_id = j.id
JOIN bench_events s ON s.queue_id = r.queue_id AND s.type = 'started'
JOIN bench_events d ON d.queue_id = r.queue_id AND d.type = 'deferred'
WHERE j.id = ANY(:ids) AND j.state = 'succeeded'
"""


@dataclass(frozen=True)
class Run:
    store: str
    workers: int
    jobs: int
    failed: int
    seconds: float
    to_start: list[float]  # dispatch -> a worker started it
    in_queue: list[float]  # of which: deferred on the queue -> a worker started it
    to_rehosted: list[float]  # the worker's result -> the job succeeded
    overhead: list[float]  # per job: dispatch -> start plus result -> re-hosted

    @property
    def jobs_per_second(self) -> float:
        return (self.jobs - self.failed) / self.seconds


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server in a process of its own (not sharing this process's CPU); its URL."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("moto's S3 server did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def s3_settings(endpoint: str) -> dict[str, str]:
    import boto3

    bucket = f"fleet-{secrets.token_hex(4)}"
    boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=S3_REGION,
        aws_access_key_id=S3_KEY,
        aws_secret_access_key=S3_SECRET,
    ).create_bucket(Bucket=bucket)
    return {
        "S3_BUCKET": bucket,
        "S3_ENDPOINT_URL": endpoint,
        "S3_REGION": S3_REGION,
        "S3_ACCESS_KEY_ID": S3_KEY,
        "S3_SECRET_ACCESS_KEY": S3_SECRET,
    }


@contextlib.asynccontextmanager
async def running_bot(fleet: Fleet) -> AsyncIterator[HeadshotApp]:
    store = {name.lower(): value for name, value in fleet.store.items()}
    settings = load_settings(**bot_settings(fleet, **store))
    async with HeadshotApp(settings, Overrides(timings=TIMINGS)) as app:
        yield app


async def _one_job(app: HeadshotApp, user: int, seed: int) -> JobEvent:
    job = await app.generation.request(
        GenerationRequest(
            platform="bench",
            platform_user_id=f"user-{user}",
            operation="headshot",
            options={"prompt": "a studio portrait", "seed": seed, "width": 64, "height": 96},
            selfie=EXAMPLE_SELFIE.read_bytes(),
        )
    )
    # Watched before anything can happen to it: no await between the request and the watch.
    async for event in app.events.watch(job.id):
        if isinstance(event, Completed | Failed):
            return event
    raise RuntimeError("the event stream ended without an outcome")


async def measure(app: HeadshotApp, fleet: Fleet, store: str, workers: int, jobs: int) -> Run:
    started = time.monotonic()
    outcomes = await asyncio.gather(
        *(_one_job(app, user=n % 10, seed=1000 * workers + n) for n in range(jobs))
    )
    seconds = time.monotonic() - started
    ids = [event.job_id for event in outcomes if isinstance(event, Completed)]
    failed = jobs - len(ids)
    rows = query(fleet.database.owner_url, OVERHEAD, ids=ids)
    return Run(
        store,
        workers,
        jobs,
        failed,
        seconds,
        to_start=[float(row[0]) for row in rows],
        in_queue=[float(row[1]) for row in rows],
        to_rehosted=[float(row[2]) for row in rows],
        overhead=[float(row[0]) + float(row[2]) for row in rows],
    )


async def bench_store(
    store: str, settings: dict[str, str], counts: list[int], jobs: int, models: Path, tmp: Path
) -> list[Run]:
    runs = []
    async with fresh_postgres_database() as url:
        await upgrade(url)
        execute(url, KEEP_EVENTS)
        fleet = Fleet(await fleet_database(url), tmp / store, models, store=settings)
        try:
            async with running_bot(fleet) as app:
                for count in counts:
                    missing = count - len([m for m in fleet.members if m.running])
                    new = [fleet.worker(["headshot"]) for _ in range(missing)]
                    if new:
                        await fleet.start(*new)
                    await _wait_for_capacity(app, count)
                    # One job per worker first, untimed: a new worker's first job warms it up.
                    await asyncio.gather(*(_one_job(app, n, seed=n) for n in range(count)))
                    run = await measure(app, fleet, store, count, jobs)
                    runs.append(run)
                    print(line(run), flush=True)
        finally:
            await fleet.stop()
    return runs


async def _wait_for_capacity(app: HeadshotApp, slots: int) -> None:
    for _ in range(200):
        if await app.engine.dispatcher.current_capacity() == slots:
            return
        await asyncio.sleep(0.05)
    raise SystemExit(f"the dispatcher never saw {slots} worker slot(s)")


def line(run: Run) -> str:
    def ms(values: list[float], q: float) -> str:
        return f"{percentile(values, q) * 1000:>7.1f}"

    return (
        f"{run.store:<5} {run.workers:>7} {run.jobs:>5} {run.failed:>6} "
        f"{run.jobs_per_second:>7.2f}   "
        f"{ms(run.to_start, 0.5)} {ms(run.to_start, 0.99)}   "
        f"{ms(run.in_queue, 0.5)} {ms(run.in_queue, 0.99)}   "
        f"{ms(run.to_rehosted, 0.5)} {ms(run.to_rehosted, 0.99)}"
    )


HEADER = (
    "                                     dispatch->start   of it queued    result->rehosted\n"
    "store workers  jobs failed  jobs/s       p50     p99       p50     p99       p50     p99"
)


async def main_async(args: argparse.Namespace) -> None:
    from tests.tiny_models import sd15

    counts = sorted(set(args.workers))
    with tempfile.TemporaryDirectory(prefix="gpu-fleet-") as folder:
        tmp = Path(folder)
        models = tmp / "models"
        models.mkdir()
        sd15.build(models)
        print(
            f"jobs={args.jobs} per run, workers={counts}, capacity 1 each, headshot 64x96, "
            f"tiny SD 1.5 on the CPU; {os.cpu_count()} cores shared by everything"
        )
        print(HEADER, flush=True)
        runs: list[Run] = []
        if "disk" in args.stores:
            runs += await bench_store("disk", {}, counts, args.jobs, models, tmp)
        if "s3" in args.stores:
            with moto_server() as endpoint:
                runs += await bench_store(
                    "s3", s3_settings(endpoint), counts, args.jobs, models, tmp
                )
    print("queue overhead per job (dispatch->start + result->rehosted), aim: p99 under 50 ms")
    for run in runs:
        p50, p99 = (percentile(run.overhead, q) * 1000 for q in (0.5, 0.99))
        print(f"{run.store:<5} {run.workers} worker(s): p50 {p50:.1f} ms, p99 {p99:.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=30, help="jobs per run")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--stores", nargs="+", choices=["disk", "s3"], default=["disk", "s3"])
    args = parser.parse_args()
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
