"""Hostile uploads against the running service: how fast each is answered, what memory it
costs, and what it does to `/images` meanwhile.

    python bench/hostile_inputs.py [--rounds 5]

The service runs as `headshot-bot run` would (SQLite, its decode workers, its web server)
against the in-process simulator; one job is run first so that `/images` has an image to
serve. For each class of input the issue 14 probe found (the progressive-JPEG scan bomb, the
memory bombs, the header amplifiers), it prints:

- one upload at a time: the median seconds to the answer and the peak memory it added (the
  service's process and its decode workers, RSS);
- 50 at once (`--rounds` times): the median and slowest answer, the peak memory added, and
  `/images` p50/p99 while they run, against its idle figure;
- how each was answered (structure, memory budget, busy...).

Aims: every hostile upload answered within 1 s; `/images` p99 within 2× idle; 50 concurrent
uploads add under 1 GiB. Run it a few times and report the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil

from backends.modelslab.simulator import Simulator, SimulatorConfig
from bot.app import HeadshotApp, Overrides
from bot.config import load_settings
from bot.generation import GenerationRequest, RequestRefused
from bot.jobs.engine import EngineTimings
from bot.jobs.events import Completed
from tests import hostile

KEY = "sk-bench-hostile-0000"
MB = 1024 * 1024
OPTIONS = {"prompt": "a professional headshot", "samples": 1}
CLASSES: dict[str, Callable[[], bytes]] = {
    "scan bomb (2000 scans)": lambda: hostile.scan_bomb(2000, (6000, 6000)),
    "lossless WebP 6000² (34 B)": hostile.lossless_webp_bomb,
    "16-bit RGBA PNG 6000²": hostile.rgba16_png,
    "9 MB of 0xFF fill": hostile.jpeg_fill_bytes,
    "2.4 M COM segments": hostile.jpeg_comments,
    "1.5 M APP15 segments": hostile.jpeg_app15,
    "700 k private PNG chunks": hostile.png_private_chunks,
    # Not refused, for contrast: within every limit, but as slow and as big as they may be.
    "legal: 30 scans of 4000²": lambda: hostile.scan_bomb(30, (4000, 4000)),
    "legal: 4000² RGBA PNG": hostile.rgba_png,
}
ANSWERS = {
    "built oddly": "structure",
    "too much memory": "budget",
    "Too many images": "busy",
    "took too long": "time limit",
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Memory:
    """Peak RSS of this process and the decode workers, sampled every 10 ms."""

    def __init__(self, app: HeadshotApp) -> None:
        self._app = app
        self.peak = 0

    def now(self) -> int:
        total = 0
        for pid in [os.getpid(), *self._app.images.pids]:
            with contextlib.suppress(psutil.NoSuchProcess):
                total += psutil.Process(pid).memory_info().rss
        return total

    async def watch(self, done: asyncio.Event) -> None:
        self.peak = self.now()
        while not done.is_set():
            self.peak = max(self.peak, self.now())
            await asyncio.sleep(0.01)


async def upload(app: HeadshotApp, data: bytes, user: str) -> tuple[float, str]:
    started = time.monotonic()
    try:
        await app.generation.request(
            GenerationRequest("bench", user, "headshot", OPTIONS, data, metered=False)
        )
        answer = "accepted"
    except RequestRefused as exc:
        answer = next((v for k, v in ANSWERS.items() if k in str(exc)), f"other: {exc}")
    return time.monotonic() - started, answer


async def timed_gets(http: httpx.AsyncClient, url: str, done: asyncio.Event) -> list[float]:
    times = []
    while not done.is_set():
        started = time.monotonic()
        answer = await http.get(url)
        answer.raise_for_status()
        times.append(time.monotonic() - started)
        await asyncio.sleep(0.005)
    return times


async def idle_gets(http: httpx.AsyncClient, url: str, seconds: float) -> list[float]:
    done = asyncio.Event()
    task = asyncio.create_task(timed_gets(http, url, done))
    await asyncio.sleep(seconds)
    done.set()
    return await task


async def measure(app: HeadshotApp, url: str, rounds: int) -> None:
    async with httpx.AsyncClient(timeout=60) as http:
        await idle_gets(http, url, 1)  # warm
        header = (
            f"{'input':28} {'bytes':>9} | {'one: s':>7} {'+MB':>5} | {'50: median s':>12} "
            f"{'max s':>6} {'+MB':>5} | {'/images idle p99':>16} {'busy p50':>8} {'p99 ms':>7} "
            "| answers"
        )
        print(header)
        print("-" * len(header))
        for name, make in CLASSES.items():
            data = make()
            # Idle just before each class: the machine's load drifts.
            idle = await idle_gets(http, url, 2)
            memory = Memory(app)
            singles, single_peaks = [], []
            for _ in range(5):
                done = asyncio.Event()
                watcher = asyncio.create_task(memory.watch(done))
                base = memory.now()
                seconds, _ = await upload(app, data, "one")
                done.set()
                await watcher
                singles.append(seconds)
                single_peaks.append(memory.peak - base)
            answers: Counter[str] = Counter()
            latencies: list[float] = []
            busy_gets: list[float] = []
            peaks: list[int] = []
            for _ in range(rounds):
                done = asyncio.Event()
                base = memory.now()
                watcher = asyncio.create_task(memory.watch(done))
                getter = asyncio.create_task(timed_gets(http, url, done))
                results = await asyncio.gather(*(upload(app, data, f"user{i}") for i in range(50)))
                done.set()
                await watcher
                busy_gets += await getter
                peaks.append(memory.peak - base)
                latencies += [seconds for seconds, _ in results]
                answers.update(answer for _, answer in results)
            print(
                f"{name:28} {len(data):>9,} | {statistics.median(singles):>7.3f} "
                f"{statistics.median(single_peaks) / MB:>5.0f} | "
                f"{statistics.median(latencies):>12.3f} {max(latencies):>6.3f} "
                f"{statistics.median(peaks) / MB:>5.0f} | "
                f"{percentile(idle, 99) * 1e3:>13.1f} ms "
                f"{percentile(busy_gets, 50) * 1e3:>8.1f} {percentile(busy_gets, 99) * 1e3:>7.1f} "
                f"| {dict(answers)} ({len(busy_gets)} gets)"
            )


async def main(rounds: int) -> None:
    simulator = Simulator(SimulatorConfig(api_keys=frozenset({KEY})))
    await simulator.start()
    try:
        with tempfile.TemporaryDirectory() as folder:
            settings = load_settings(
                data_dir=Path(folder),
                modelslab_base_url=simulator.base_url,
                modelslab_api_key=KEY,
                web_port=0,
                daily_quota=1000,
                max_active_per_user=100,
                # The hostile inputs are about decoding, not faces: the check is off.
                face_check=False,
                identity_gate=False,
            )
            timings = EngineTimings(min_poll_seconds=0.05, max_poll_seconds=0.5)
            async with HeadshotApp(
                settings, Overrides(timings=timings, local_webhooks=True)
            ) as app:
                print(
                    f"decode workers: {settings.image_workers}, time limit "
                    f"{settings.image_decode_seconds:g} s, budget "
                    f"{settings.image_decode_memory_mb} MB, queue {settings.image_decode_queue}; "
                    f"{os.cpu_count()} CPUs"
                )
                selfie = hostile.flat_progressive_jpeg((600, 800))
                job = await app.generation.request(
                    GenerationRequest("bench", "alice", "headshot", OPTIONS, selfie, metered=False)
                )
                events = [event async for event in app.events.watch(job.id)]
                final = events[-1]
                assert isinstance(final, Completed), final
                await measure(app, final.images[0].url, rounds)
    finally:
        await simulator.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of 50 concurrent uploads")
    asyncio.run(main(parser.parse_args().rounds))
