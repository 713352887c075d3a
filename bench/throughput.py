"""Throughput of the whole path: request -> reserve -> dispatch -> real client -> simulator (zero
processing time, own process) -> webhook -> fetch -> re-host -> commit.

    python bench/throughput.py --jobs 1000 --users 20 --cap 50 --metrics off

Prints jobs/s, the bot process's CPU milliseconds per job (user and system), acknowledgement
latency (request accepted and its credit reserved), latency from the webhook's arrival to the
re-hosted image, the bot process's peak RSS, the full (generation-2) garbage collections during
the run, on SQLite the writes per COMMIT, and the CPU per job of the processes sharing the cores
with the bot: the simulator and the image decode workers. Run it a few times: report the median
(`--rounds`).

Each user sends the benchmark's selfie: a generated 256x320 JPEG with no face, so the face check
and the identity gate are off. `--faces on` turns both on and sends the example selfie
(examples/astronaut.jpg), as `headshot-bot run` does by default.

    python bench/throughput.py --jobs 100 --users 1 --one-at-a-time      # light load

`--one-at-a-time`: each user waits for its job's image before the next request, which measures
webhook -> re-hosted latency without a queue in front of it.

    python -m tests.postgres -- python bench/throughput.py --database postgres
    python bench/throughput.py --sqlite-synchronous FULL
    python bench/throughput.py --loop uvloop

PostgreSQL: a fresh database on TEST_POSTGRES_URL's server, one replica. `--sqlite-synchronous`
sets SQLITE_SYNCHRONOUS. `--loop uvloop` runs the bot on uvloop's event loop.

    python bench/throughput.py --jobs 1000 --users 20 --cap 50 --metrics both --rounds 5

What metrics cost: runs with METRICS on and off, interleaved (the order alternates each round),
each against a fresh simulator and database, after one run not counted (the first run in a
process warms caches: `--warm-up` does the same for any other run), then the medians of each
and their ratio. The CPU
time per job is the bot process's own (the simulator is another process), and includes one
scrape of /metrics at the end of a run with metrics on.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
from PIL import Image

# `python bench/throughput.py` puts bench/ on sys.path, not the repository root: add the root
# so that the test helpers (the example selfie, a fresh PostgreSQL database) can be imported.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.app import HeadshotApp, Overrides
from bot.collector import settle_after_start_up, undo_settling
from bot.config import Settings, load_settings
from bot.event_loop import loop_runner
from bot.generation import GenerationRequest
from bot.jobs.engine import EngineTimings
from bot.jobs.events import Completed, Failed
from storage.database import SQLITE_SYNCHRONOUS
from tests.conftest import EXAMPLE_SELFIE
from tests.databases import fresh_postgres_database


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _selfie() -> bytes:
    image = Image.new("RGB", (256, 320), (200, 160, 130))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def _wait_until_listening(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError("the simulator did not start")


# The process of each simulator `simulator_process` runs, by its port (for its CPU time).
SIMULATOR_PIDS: dict[int, int] = {}


@contextlib.contextmanager
def simulator_process(cap: int, processing_seconds: float = 0.001) -> Iterator[int]:
    """The simulator in its own process, as the real provider is elsewhere; yields its port."""
    port = _free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "bot", "simulate", "--port", str(port)),
            *("--processing-seconds", str(processing_seconds), "--max-queued", str(cap)),
        ],
        env={**os.environ, "LOG_LEVEL": "WARNING"},
        stderr=subprocess.DEVNULL,
    )
    SIMULATOR_PIDS[port] = process.pid
    try:
        yield port
    finally:
        del SIMULATOR_PIDS[port]
        process.terminate()
        process.wait()


# The benchmarks' generated selfie has no face: the face check and the identity gate are off
# unless a run turns them on (and sends the example selfie: `discord_ack.py --faces`).
FACES_OFF: dict[str, Any] = {"face_check": False, "identity_gate": False}


def bench_settings(workdir: Path, sim_port: int, cap: int, **overrides: Any) -> Settings:
    """The service in `workdir`, against the simulator on `sim_port`, both with cap `cap`."""
    overrides = {
        **FACES_OFF,
        "database_url": f"sqlite+aiosqlite:///{workdir / 'bench.db'}",
        **overrides,
    }
    return load_settings(
        data_dir=workdir,
        modelslab_base_url=f"http://127.0.0.1:{sim_port}",
        modelslab_api_key="bench-key",
        modelslab_max_queued=cap,
        web_port=0,
        **overrides,
    )


async def run(
    jobs: int,
    users: int,
    cap: int,
    sim_port: int,
    workdir: Path,
    *,
    metrics: bool = True,
    faces: bool = False,
    database_url: str | None = None,
    synchronous: str = "NORMAL",
    one_at_a_time: bool = False,
    around: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext,
) -> dict[str, float]:
    """One run in a fresh service; `around` is entered just around the requests and their jobs
    (a profiler: `bench/profile_job.py`)."""
    await _wait_until_listening(sim_port)
    settings = bench_settings(
        workdir,
        sim_port,
        cap,
        daily_quota=10_000,
        metrics=metrics,
        face_check=faces,
        identity_gate=faces,
        sqlite_synchronous=synchronous,
        # One replica on PostgreSQL: its own folder is the one image store.
        **({"database_url": database_url, "image_store_shared": True} if database_url else {}),
    )
    timings = EngineTimings(min_poll_seconds=5.0, max_poll_seconds=5.0)
    selfie = EXAMPLE_SELFIE.read_bytes() if faces else _selfie()
    async with HeadshotApp(settings, Overrides(timings=timings, local_webhooks=True)) as app:
        settle_after_start_up()  # as `headshot-bot run` does once everything has started
        full_collections = _count_full_collections()
        group = app.db.group_commit
        writes, commits = (group.writes, group.transactions) if group else (0, 0)
        others = _Helpers(sim_port, app.images.pids)
        others.start()
        with full_collections, around():
            cpu = os.times()
            figures = await _drive(app, jobs, users, selfie, one_at_a_time=one_at_a_time)
            spent = os.times()
        figures.update(others.ms_per_job(jobs))
        undo_settling()
        if metrics:
            figures["scrape_ms"] = await _scrape_ms(app)
        figures["cpu_ms_per_job"] = (
            (spent.user + spent.system - cpu.user - cpu.system) * 1000 / jobs
        )
        figures["user_ms_per_job"] = (spent.user - cpu.user) * 1000 / jobs
        figures["system_ms_per_job"] = (spent.system - cpu.system) * 1000 / jobs
        figures["full_gc"] = full_collections.count
        if group is not None:
            # SQLite's group commit: writes per COMMIT during the run.
            figures["writes_per_commit"] = (group.writes - writes) / max(
                1, group.transactions - commits
            )
        return figures


class _Helpers:
    """The CPU of the processes beside the bot on the same cores: the simulator (when
    `simulator_process` runs it) and the image decode workers."""

    def __init__(self, sim_port: int, image_worker_pids: list[int]) -> None:
        simulator = SIMULATOR_PIDS.get(sim_port)
        self._groups = {
            "simulator_ms_per_job": [psutil.Process(simulator)] if simulator else [],
            "image_workers_ms_per_job": [psutil.Process(pid) for pid in image_worker_pids],
        }
        self._before: dict[str, float] = {}

    def _cpu(self, name: str) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self._groups[name])

    def start(self) -> None:
        self._before = {name: self._cpu(name) for name in self._groups}

    def ms_per_job(self, jobs: int) -> dict[str, float]:
        return {
            name: (self._cpu(name) - self._before[name]) * 1000 / jobs
            for name, processes in self._groups.items()
            if processes
        }


class _count_full_collections(contextlib.AbstractContextManager["_count_full_collections"]):
    """Counts the collector's full (generation-2) passes while entered."""

    def __init__(self) -> None:
        self.count = 0

    def _seen(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 2:
            self.count += 1

    def __enter__(self) -> _count_full_collections:
        gc.callbacks.append(self._seen)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._seen)


async def _scrape_ms(app: HeadshotApp) -> float:
    """One scrape, as Prometheus makes every 15 s: its wall time."""
    reader, writer = await asyncio.open_connection(*app.base_url.removeprefix("http://").split(":"))
    started = time.perf_counter()
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
    answer = await reader.read()
    writer.close()
    if not answer.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(f"/metrics answered {answer[:40]!r}")
    return (time.perf_counter() - started) * 1000


async def _drive(
    app: HeadshotApp, jobs: int, users: int, selfie: bytes, *, one_at_a_time: bool = False
) -> dict[str, float]:
    webhook_at: dict[str, float] = {}
    nudge = app.engine.nudge

    def timed_nudge(job_id: str) -> bool:
        webhook_at.setdefault(job_id, time.perf_counter())
        return nudge(job_id)

    app.engine.nudge = timed_nudge  # type: ignore[method-assign]
    acks: list[float] = []
    rehost_latency: list[float] = []
    watchers: list[asyncio.Task[None]] = []

    async def watch(job_id: str) -> None:
        async for event in app.events.watch(job_id):
            if isinstance(event, Completed):
                rehost_latency.append(time.perf_counter() - webhook_at[job_id])
                return
            if isinstance(event, Failed):
                raise RuntimeError(f"job {job_id} failed: {event.reason}")

    async def user(index: int, count: int) -> None:
        for _ in range(count):
            started = time.perf_counter()
            job = await app.generation.request(
                GenerationRequest(
                    platform="bench",
                    platform_user_id=f"user{index}",
                    operation="headshot",
                    options={"prompt": "corporate headshot", "width": 256, "height": 320},
                    selfie=selfie,
                )
            )
            acks.append(time.perf_counter() - started)
            watcher = asyncio.create_task(watch(job.id))
            watchers.append(watcher)
            if one_at_a_time:
                await watcher

    share, extra = divmod(jobs, users)
    started = time.perf_counter()
    await asyncio.gather(*(user(i, share + (i < extra)) for i in range(users)))
    await asyncio.gather(*watchers)
    await app.engine.wait_idle()
    elapsed = time.perf_counter() - started
    problems = await app.accounts.ledger_violations()
    if problems or len(rehost_latency) != jobs:
        raise RuntimeError(f"{len(rehost_latency)}/{jobs} completed; ledger: {problems[:3]}")
    return {
        "jobs_per_s": jobs / elapsed,
        "ack_p50_ms": statistics.median(acks) * 1000,
        "ack_p99_ms": _percentile(acks, 99) * 1000,
        "rehost_p50_ms": statistics.median(rehost_latency) * 1000,
        "rehost_p99_ms": _percentile(rehost_latency, 99) * 1000,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


async def one_run(
    args: argparse.Namespace, sim_port: int, workdir: Path, **kw: Any
) -> dict[str, float]:
    """One run as the command line asks, on a fresh database of the kind it names."""
    options: dict[str, Any] = {
        "faces": args.faces == "on",
        "synchronous": args.sqlite_synchronous,
        "one_at_a_time": args.one_at_a_time,
        **kw,
    }
    if args.database == "sqlite":
        return await run(args.jobs, args.users, args.cap, sim_port, workdir, **options)
    async with fresh_postgres_database() as url:
        return await run(
            args.jobs, args.users, args.cap, sim_port, workdir, database_url=url, **options
        )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--cap", type=int, default=50, help="MODELSLAB_MAX_QUEUED, sim's cap")
    parser.add_argument(
        "--faces",
        choices=("off", "on"),
        default="off",
        help="on: face check and identity gate, and the example selfie",
    )
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--sqlite-synchronous", choices=SQLITE_SYNCHRONOUS, default="NORMAL")
    parser.add_argument(
        "--one-at-a-time", action="store_true", help="each user waits for its image (light load)"
    )
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_options(parser)
    parser.add_argument(
        "--metrics", choices=("on", "off", "both"), default="on", help="METRICS; both: compare"
    )
    parser.add_argument("--rounds", type=int, default=1, help="runs of each setting")
    parser.add_argument(
        "--warm-up",
        action="store_true",
        help="one run of up to 200 jobs first, not counted (always with --metrics both)",
    )
    args = parser.parse_args()
    run_loop = loop_runner(args.loop)
    settings = {"on": [True], "off": [False], "both": [True, False]}[args.metrics]
    runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
    selfie = "the example selfie" if args.faces == "on" else "a generated 256x320 JPEG"
    print(
        f"jobs={args.jobs} users={args.users} cap={args.cap} faces={args.faces} ({selfie}) "
        f"database={args.database} loop={args.loop} one_at_a_time={args.one_at_a_time}"
        + (f" sqlite_synchronous={args.sqlite_synchronous}" if args.database == "sqlite" else "")
    )
    if args.metrics == "both" or args.warm_up:
        # The first run in a process pays for what is cached after it (SQLAlchemy's compiled
        # statements, imports): one run, not counted, before those compared.
        with tempfile.TemporaryDirectory() as tmp, simulator_process(args.cap) as sim_port:
            warm = argparse.Namespace(**{**vars(args), "jobs": min(args.jobs, 200)})
            run_loop(one_run(warm, sim_port, Path(tmp)))
    for round_ in range(args.rounds):
        order = settings if round_ % 2 == 0 else settings[::-1]
        for metrics in order:
            with tempfile.TemporaryDirectory() as tmp, simulator_process(args.cap) as sim_port:
                figures = run_loop(one_run(args, sim_port, Path(tmp), metrics=metrics))
            runs[metrics].append(figures)
            shown = " ".join(f"{name}={value:.1f}" for name, value in figures.items())
            print(f"round {round_ + 1} metrics={'on' if metrics else 'off'}: {shown}")
    medians = {
        metrics: {name: statistics.median(r[name] for r in done) for name in done[0]}
        for metrics, done in runs.items()
        if done
    }
    for metrics, figures in medians.items():
        print(f"median of {len(runs[metrics])}, metrics {'on' if metrics else 'off'}:")
        for name, value in figures.items():
            print(f"{name:>17}: {value:8.1f}")
    if len(medians) == 2:
        on, off = medians[True], medians[False]
        print(f"cpu per job, on/off: {on['cpu_ms_per_job'] / off['cpu_ms_per_job']:.3f}")
        print(f"jobs/s, on/off: {on['jobs_per_s'] / off['jobs_per_s']:.3f}")


if __name__ == "__main__":
    main()
