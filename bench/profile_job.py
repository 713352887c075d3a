"""Where a job's CPU goes: the per-stage budget of `bench/throughput.py`'s run.

    python bench/profile_job.py --jobs 1000 --users 20 --cap 50

Runs the throughput benchmark once, not counted (it warms SQLAlchemy's statement cache and the
imports), then again measured, and prints the process's CPU per job (user and system, from
os.times) beside jobs/s, then two views of the same run:

By stage, the event loop thread's CPU per job. A job's stages are:

    intake    the request: checks, the selfie stored, the job's row (GenerationService.request)
    reserve   the credit reserved in the job's transaction (storage/ledger.py)
    dispatch  the fair dispatcher granting provider slots
    submit    the job marked submitted, the request built and sent to the provider
    webhook   the provider's webhook received and matched to its job
    fetch     the result fetched and recorded
    re-host   the images downloaded and stored
    commit    the job's end committed (outputs, credits settled)
    deliver   the job's events reaching whoever watches it

Each stage's coroutine is wrapped to note its name in a context variable, and every callback
the loop runs is timed (thread CPU) and charged to the stage its task was in. Only the loop is
timed this way; the other threads' CPU (the SQLite connections', file I/O's) is the process's
minus the loop's. On SQLite a write's statements run whole in its connection's thread
(`Database.run_write`), so most of reserve's and commit's CPU shows there, not in their stage.
The timing adds two clock reads per callback.

By library, sampled by py-spy (`--gil --nonblocking`: the thread holding the GIL, read from
outside without pausing the process, so it does not distort what it measures): the share of
SQL (SQLAlchemy and the SQLite driver), HTTP (httpx, httpcore, h11, aiohttp), the event loop
and our own code, then the places where the most samples were taken.

Needs py-spy (`pip install py-spy`) and the right to attach to this process (root, or
ptrace_scope 0). `--loop uvloop` is not supported: uvloop's callbacks cannot be timed.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import contextvars
import functools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import bot.web
from bench.throughput import add_run_options, one_run, simulator_process
from bot.generation import GenerationService
from bot.jobs.dispatcher import Dispatcher
from bot.jobs.engine import JobEngine
from bot.jobs.event_bus import Subscription
from storage import ledger

STAGE: contextvars.ContextVar[str] = contextvars.ContextVar("bench_stage", default="")
# (owner, attribute, stage): each coroutine function noting its stage while it runs.
STAGED: list[tuple[Any, str, str]] = [
    (GenerationService, "request", "intake"),
    (ledger, "reserve", "reserve"),
    (Dispatcher, "_dispatch", "dispatch"),
    (JobEngine, "_submit", "submit"),
    (bot.web, "modelslab_webhook", "webhook"),
    (JobEngine, "_await_result", "fetch"),
    (JobEngine, "_rehost", "re-host"),
    (JobEngine, "_succeed", "commit"),
    (Subscription, "__anext__", "deliver"),
]
STAGE_ORDER = list(dict.fromkeys(stage for _, _, stage in STAGED))
LIBRARIES = {
    "SQL": ("sqlalchemy/", "aiosqlite/", "storage/sqlite_driver.py", "psycopg/", "sqlite3/"),
    "HTTP": ("httpx/", "httpcore/", "h11/", "aiohttp/", "anyio/", "yarl/", "multidict/"),
    "loop": ("asyncio/", "selectors.py", "concurrent/", "threading.py", "queue.py"),
}


def _staged(function: Callable[..., Any], stage: str) -> Callable[..., Any]:
    @functools.wraps(function)
    async def noting(*args: Any, **kwargs: Any) -> Any:
        _charge()
        token = STAGE.set(stage)
        try:
            return await function(*args, **kwargs)
        finally:
            _charge()
            STAGE.reset(token)

    return noting


@contextlib.contextmanager
def stages_noted() -> Iterator[None]:
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in STAGED]
    for (owner, name, stage), (_, _, function) in zip(STAGED, originals, strict=True):
        setattr(owner, name, _staged(function, stage))
    try:
        yield
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)


class LoopTimer:
    """Charges the asyncio loop's CPU to stages: within a callback, the thread CPU since the
    last mark goes to the stage the running task is in whenever that stage changes (a staged
    coroutine begins or ends) and when the callback ends."""

    def __init__(self) -> None:
        self.by_stage: dict[str, float] = collections.defaultdict(float)
        self.loop_seconds = 0.0
        self.mark = 0.0

    def charge(self) -> None:
        now = time.thread_time()
        self.by_stage[STAGE.get()] += now - self.mark
        self.mark = now

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        global _TIMER
        original = asyncio.events.Handle._run

        def timed(handle: asyncio.Handle) -> None:
            self.mark = time.thread_time()
            try:
                original(handle)
            finally:
                now = time.thread_time()
                self.by_stage[handle._context.get(STAGE, "")] += now - self.mark  # type: ignore[attr-defined]

        started = time.thread_time()
        asyncio.events.Handle._run = timed  # type: ignore[method-assign]
        _TIMER = self
        try:
            yield
        finally:
            _TIMER = None
            asyncio.events.Handle._run = original  # type: ignore[method-assign]
            self.loop_seconds = time.thread_time() - started


_TIMER: LoopTimer | None = None


def _charge() -> None:
    if _TIMER is not None and threading.current_thread() is threading.main_thread():
        _TIMER.charge()


def _frame(text: str) -> tuple[str, str]:
    """'Class.method (path/file.py:12)' -> ('Class.method', 'path/file.py')."""
    name, _, where = text.rpartition(" (")
    return name, where.rsplit(":", 1)[0]


def _library(frames: list[tuple[str, str]]) -> str:
    for _name, path in reversed(frames):
        for library, markers in LIBRARIES.items():
            if any(marker in path for marker in markers):
                return library
        if path.startswith(("bot/", "storage/", "backends/", "adapters/")):
            return "ours"
    return "other"


def _place(frames: list[tuple[str, str]]) -> str:
    """A sample's place: its innermost frame of ours, with the library frame it was in."""
    leaf_name, leaf_path = frames[-1]
    leaf = f"{leaf_name} ({leaf_path.rsplit('/', 2)[-1]})"
    for name, path in reversed(frames):
        if path.startswith(("bot/", "storage/", "backends/")):
            return f"{name} ({path})" + ("" if (name, path) == frames[-1] else f" > {leaf}")
    return leaf


def sampled_budget(raw: Path, rate: int, jobs: int) -> tuple[dict[str, float], dict[str, float]]:
    """ms per job by library, and by place."""
    by_library: dict[str, float] = collections.defaultdict(float)
    by_place: dict[str, float] = collections.defaultdict(float)
    per_sample = 1000 / rate / jobs
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [_frame(text) for text in stack.split(";")]
        weight = int(count) * per_sample
        by_library[_library(frames)] += weight
        by_place[_place(frames)] += weight
    return by_library, by_place


@contextlib.contextmanager
def sampled(raw: Path, rate: int) -> Iterator[None]:
    """py-spy attached to this process while entered; its raw stacks written to `raw`."""
    beside = Path(sys.executable).with_name("py-spy")  # a virtual environment not activated
    spy = shutil.which("py-spy") or (str(beside) if beside.exists() else None)
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    process = subprocess.Popen(
        [
            *(spy, "record", "--pid", str(os.getpid()), "--gil", "--nonblocking"),
            *("--rate", str(rate), "--format", "raw", "--output", str(raw)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)  # attaching takes a moment
    if process.poll() is not None:
        assert process.stderr is not None
        raise SystemExit(f"py-spy could not attach: {process.stderr.read().decode()[-300:]}")
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        _, errors = process.communicate(timeout=60)
        if not raw.exists():
            raise SystemExit(f"py-spy wrote no profile: {errors.decode()[-300:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_options(parser)
    parser.add_argument("--rate", type=int, default=250, help="py-spy's samples per second")
    parser.add_argument("--places", type=int, default=20, help="places listed")
    args = parser.parse_args()
    if args.loop != "asyncio":
        raise SystemExit("--loop uvloop: uvloop's callbacks cannot be timed; profile asyncio's")
    timer = LoopTimer()

    @contextlib.contextmanager
    def measured() -> Iterator[None]:
        with sampled(raw, args.rate), timer.timing():
            yield

    with tempfile.TemporaryDirectory() as tmp, stages_noted():
        work = Path(tmp)
        (work / "warm").mkdir()
        (work / "run").mkdir()
        raw = work / "profile.txt"
        with simulator_process(args.cap) as sim_port:
            warm = argparse.Namespace(**{**vars(args), "jobs": min(args.jobs, 200)})
            asyncio.run(one_run(warm, sim_port, work / "warm", metrics=False))
        with simulator_process(args.cap) as sim_port:
            figures = asyncio.run(
                one_run(args, sim_port, work / "run", metrics=False, around=measured)
            )
        by_library, by_place = sampled_budget(raw, args.rate, args.jobs)
    per_job = 1000 / args.jobs
    print(
        f"jobs={args.jobs} users={args.users} cap={args.cap} faces={args.faces} "
        f"database={args.database} (measured: loop callbacks timed, py-spy at {args.rate} Hz)"
    )
    print(
        f"jobs/s {figures['jobs_per_s']:.1f}   process CPU {figures['cpu_ms_per_job']:.2f} "
        f"ms/job (user {figures['user_ms_per_job']:.2f}, system "
        f"{figures['system_ms_per_job']:.2f})   ack p99 {figures['ack_p99_ms']:.0f} ms   "
        f"full GCs {figures['full_gc']:.0f}"
    )
    loop_ms = timer.loop_seconds * per_job
    print("\nBy stage: CPU ms per job")
    for stage in STAGE_ORDER:
        print(f"  {stage:<22}{timer.by_stage.get(stage, 0.0) * per_job:7.2f}")
    print(f"  {'loop, in no stage':<22}{timer.by_stage.get('', 0.0) * per_job:7.2f}")
    timed = sum(timer.by_stage.values()) * per_job
    print(f"  {'loop, between callbacks':<22}{loop_ms - timed:7.2f}   (polling for I/O)")
    print(f"  {'other threads':<22}{figures['cpu_ms_per_job'] - loop_ms:7.2f}")
    print(f"  {'total':<22}{figures['cpu_ms_per_job']:7.2f}")
    sampled_ms = sum(by_library.values())
    print(f"\nBy library: ms per job holding the GIL (py-spy, {sampled_ms:.2f} in all)")
    for library, spent in sorted(by_library.items(), key=lambda item: -item[1]):
        print(f"  {library:<22}{spent:7.2f}")
    print("\nPlaces: ms per job")
    for place, spent in sorted(by_place.items(), key=lambda item: -item[1])[: args.places]:
        print(f"  {spent:6.2f}  {place}")


if __name__ == "__main__":
    main()
