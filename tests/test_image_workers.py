"""The decode workers (issue 14, items 1-2): a time limit per decode, a worker killed at it
and replaced, a bound on how many decodes run and wait, memory held under the budget by many
hostile uploads at once, and `/images` answering while they run."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import psutil
import pytest
from PIL import Image

from bot.generation import GenerationRequest, RequestRefused
from bot.images import ImageRejected, ImageWorkers, image_workers
from tests import hostile
from tests.conftest import AppFactory
from tests.test_engine import OPTIONS, run_job

MB = 1024 * 1024


@pytest.fixture
async def workers() -> AsyncIterator[ImageWorkers]:
    pool = ImageWorkers(workers=2, time_limit=30.0, max_waiting=64)
    await pool.start()
    try:
        yield pool
    finally:
        await pool.aclose()


def noise_png(size: tuple[int, int]) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(out, "PNG")
    return out.getvalue()


async def test_a_decode_is_killed_at_its_time_limit_and_its_worker_replaced() -> None:
    pool = ImageWorkers(workers=1, time_limit=0.5)
    await pool.start()
    try:
        (before,) = pool.pids
        started = time.monotonic()
        with pytest.raises(ImageRejected) as caught:
            await pool.run(time.sleep, 30)  # stands in for a decode that never ends
        assert time.monotonic() - started < 5
        assert caught.value.reason == "too_slow"
        assert str(caught.value) == (
            "That image took too long to process: send a smaller or simpler one"
        )
        assert not psutil.pid_exists(before) or psutil.Process(before).status() == "zombie"
        (after,) = pool.pids
        assert after != before
        # The replacement works at once.
        result = await pool.sanitise(noise_png((300, 300)), max_bytes=10 * MB)
        assert result.width == 300
    finally:
        await pool.aclose()


async def test_a_real_decode_past_the_limit_is_stopped() -> None:
    data = noise_png((2500, 2500))
    pool = ImageWorkers(workers=1, time_limit=30.0)
    await pool.start()
    try:
        pool.time_limit = 0.05
        with pytest.raises(ImageRejected) as caught:
            await pool.sanitise(data, max_bytes=20 * MB)
        assert caught.value.reason == "too_slow"
    finally:
        await pool.aclose()


async def test_a_burst_of_cheap_uploads_waits_its_turn() -> None:
    """500 people sent to /headshot at once by a server's announcement: their selfies take a
    few milliseconds each, so they wait rather than being told to try again. Counted, as
    before, at most 32 could wait and the rest were refused."""
    burst = 200
    selfie = noise_png((160, 160))
    for max_waiting, refused in ((512, 0), (32, burst - 2 - 32)):
        pool = ImageWorkers(workers=2, time_limit=30.0, max_waiting=max_waiting)
        await pool.start()
        try:
            outcomes = await asyncio.gather(
                *(pool.sanitise(selfie, max_bytes=10 * MB) for _ in range(burst)),
                return_exceptions=True,
            )
        finally:
            await pool.aclose()
        busy = [o for o in outcomes if isinstance(o, ImageRejected) and o.reason == "busy"]
        assert len(busy) == refused
        sanitised = [o for o in outcomes if o not in busy]
        assert len(sanitised) == burst - refused
        assert all(o.width == 160 for o in sanitised)  # type: ignore[union-attr]


async def test_uploads_that_would_wait_too_long_are_told_to_try_again() -> None:
    """The pace is the oldest running call's age when that is longer than the recent mean: a
    costly decode running for half a second with a one-second bound leaves room for one
    upload behind it, not two."""
    pool = ImageWorkers(workers=1, time_limit=30.0, max_waiting=100, max_wait_seconds=1.0)
    await pool.start()
    try:
        slow = asyncio.create_task(pool.run(time.sleep, 2.0))
        await asyncio.sleep(0.5)
        first = asyncio.create_task(pool.sanitise(noise_png((200, 200)), max_bytes=10 * MB))
        await asyncio.sleep(0)
        with pytest.raises(ImageRejected) as caught:
            await pool.sanitise(noise_png((200, 200)), max_bytes=10 * MB)
        assert caught.value.reason == "busy"
        await slow
        assert (await first).width == 200
    finally:
        await pool.aclose()


async def test_uploads_past_the_waiting_bound_are_told_to_try_again() -> None:
    pool = ImageWorkers(workers=1, time_limit=30.0, max_waiting=1)
    await pool.start()
    try:
        busy = asyncio.create_task(pool.run(time.sleep, 1.0))
        await asyncio.sleep(0.2)
        waiting = asyncio.create_task(pool.sanitise(noise_png((200, 200)), max_bytes=10 * MB))
        await asyncio.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(ImageRejected) as caught:
            await pool.sanitise(noise_png((200, 200)), max_bytes=10 * MB)
        assert time.monotonic() - started < 0.5
        assert caught.value.reason == "busy"
        assert str(caught.value) == (
            "Too many images are being processed right now: try again in a minute"
        )
        # Our own work (a generator's output) waits instead of being refused.
        inspected = asyncio.create_task(pool.inspect(hostile.flat_progressive_jpeg((300, 300))))
        await busy
        assert (await waiting).width == 200
        assert (await inspected).width == 300
    finally:
        await pool.aclose()


async def test_a_cancelled_caller_does_not_lose_a_worker(workers: ImageWorkers) -> None:
    calls = [asyncio.create_task(workers.run(time.sleep, 0.3)) for _ in range(4)]
    await asyncio.sleep(0.05)
    calls[3].cancel()  # still waiting
    calls[0].cancel()  # running: its worker comes back when the call ends
    await asyncio.gather(*calls, return_exceptions=True)
    results = await asyncio.gather(*(workers.run(abs, -n) for n in range(6)))
    assert results == list(range(6))


async def test_closing_ends_running_and_waiting_calls_and_leaves_no_process() -> None:
    pool = ImageWorkers(workers=1, time_limit=30.0)
    await pool.start()
    (pid,) = pool.pids
    calls = [asyncio.create_task(pool.run(time.sleep, 10)) for _ in range(2)]
    await asyncio.sleep(0.3)
    await pool.aclose()
    results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5)
    assert all(isinstance(result, Exception) for result in results)
    assert pool.pids == []
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"


def _rss(pids: Callable[[], list[int]]) -> int:
    total = 0
    for pid in [os.getpid(), *pids()]:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += psutil.Process(pid).memory_info().rss
    return total


async def test_fifty_concurrent_hostile_uploads_stay_under_the_memory_budget(
    workers: ImageWorkers,
) -> None:
    heavy = hostile.rgba_png()
    inputs = [
        hostile.lossless_webp_bomb(),
        hostile.rgba16_png(),
        hostile.scan_bomb(2000),
        hostile.png_private_chunks(),
        hostile.jpeg_comments(),
        heavy,
        heavy,
        heavy,
    ]
    uploads = [inputs[i % len(inputs)] for i in range(50)]
    baseline = _rss(lambda: workers.pids)
    peak = baseline
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, _rss(lambda: workers.pids))
            await asyncio.sleep(0.02)

    sampler = asyncio.create_task(sample())
    results = await asyncio.gather(
        *(workers.sanitise(data, max_bytes=10 * MB) for data in uploads), return_exceptions=True
    )
    done.set()
    await sampler
    reasons = [r.reason if isinstance(r, ImageRejected) else "ok" for r in results]
    assert reasons.count("ok") == sum(data is heavy for data in uploads)
    assert set(reasons) == {"ok", "too_costly", "odd_structure"}
    added = peak - baseline
    # Two workers at one budget each at most; six unbounded decodes of the WebP bomb alone
    # would add 3.2 GB.
    assert added < 2 * workers.memory_budget + 128 * MB, f"{added / MB:.0f} MB added"


async def test_images_keep_answering_while_hostile_uploads_run(
    make_app: AppFactory, selfie: bytes
) -> None:
    app = await make_app()
    assert image_workers() is app.images
    _, events = await run_job(app, selfie, "headshot")
    url = events[-1].images[0].url  # type: ignore[attr-defined]
    # Legal but slow to decode: 30 progressive scans of 4000×4000 (the most allowed at that
    # size), and heavy PNGs.
    slow = hostile.scan_bomb(30, (4000, 4000))
    uploads = [slow, hostile.rgba_png(), hostile.lossless_webp_bomb(), hostile.scan_bomb()]

    async def upload(data: bytes) -> None:
        request = GenerationRequest("test", "mallory", "headshot", OPTIONS["headshot"], data)
        with contextlib.suppress(RequestRefused):
            await app.generation.request(request)

    async with httpx.AsyncClient() as http:

        async def timed_get() -> float:
            started = time.monotonic()
            answer = await http.get(url)
            assert answer.status_code == 200
            return time.monotonic() - started

        idle = sorted([await timed_get() for _ in range(20)])
        flood = [asyncio.create_task(upload(uploads[i % len(uploads)])) for i in range(24)]
        await asyncio.sleep(0.2)
        busy = []
        while not all(task.done() for task in flood) and len(busy) < 200:
            busy.append(await timed_get())
            await asyncio.sleep(0.01)
        await asyncio.gather(*flood)
    assert len(busy) >= 10, "the uploads ended before /images could be timed"
    # A generous bound on a shared machine: before the decode workers, six scan bombs made
    # /images wait 20 s behind them on asyncio's default thread pool.
    assert max(busy) < 1.0, f"idle max {max(idle):.3f} s, busy max {max(busy):.3f} s"


async def test_a_worker_inherits_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSLAB_API_KEY", "canary-key")
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://u:canary@db/x")
    pool = ImageWorkers(workers=1, time_limit=30.0)
    await pool.start()
    try:
        assert await pool.run(os.getenv, "MODELSLAB_API_KEY") is None
        assert await pool.run(os.getenv, "DATABASE_URL") is None
        assert await pool.run(os.getenv, "PATH") == os.environ["PATH"]
    finally:
        await pool.aclose()


async def test_a_worker_may_send_back_only_plain_values_and_image_results() -> None:
    import datetime

    pool = ImageWorkers(workers=1, time_limit=30.0)
    await pool.start()
    try:
        (before,) = pool.pids
        # Any other class in an answer (what a taken-over worker could send to run code in the
        # service) is refused unread, and the worker replaced.
        with pytest.raises(ImageRejected) as caught:
            await pool.run(datetime.date.fromordinal, 1)
        assert caught.value.reason == "crashed"
        (after,) = pool.pids
        assert after != before
        assert (await pool.sanitise(noise_png((200, 200)), max_bytes=10 * MB)).width == 200
    finally:
        await pool.aclose()


async def test_the_time_limit_counts_cpu_not_a_wait_for_a_core() -> None:
    pool = ImageWorkers(workers=1, time_limit=1.0)
    await pool.start()
    try:
        (pid,) = pool.pids
        call = asyncio.create_task(pool.run(sum, range(2_000_000)))
        # The worker gets no CPU for twice its limit (as on a host loaded to the brim), then
        # finishes its short piece of work: it was starved, not hostile.
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(2.0)
        os.kill(pid, signal.SIGCONT)
        assert await asyncio.wait_for(call, 10) == sum(range(2_000_000))
        assert pool.pids == [pid]
    finally:
        await pool.aclose()


async def test_the_workers_are_ready_and_warm_when_start_returns() -> None:
    """`start` waits for each worker's start-up and warm-up, so that the first selfies of a
    burst wait for neither: the codecs that a first WebP or a first colour-managed image would
    load are loaded already. (Before, `start` returned while the worker was still booting:
    about 70 ms here, paid by the first upload.)"""
    pool = ImageWorkers(workers=2, time_limit=30.0)
    await pool.start()
    try:
        assert len(pool.pids) == 2
        for pid in pool.pids:
            loaded = {Path(m.path).name.split(".")[0] for m in psutil.Process(pid).memory_maps()}
            assert {"_webp", "_imagingcms"} <= loaded, sorted(loaded)
    finally:
        await pool.aclose()


async def test_a_worker_that_cannot_start_stops_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONHOME", "/nonexistent")  # the worker's interpreter cannot start
    pool = ImageWorkers(workers=1, time_limit=30.0)
    try:
        with pytest.raises(RuntimeError, match=r"image worker .* did not start"):
            await pool.start()
    finally:
        await pool.aclose()
