"""CPU per API call of the two HTTP clients the ModelsLab backend could use, against the
simulator in its own process: httpx (as the client used to) and aiohttp (as it does now).

    python bench/http_clients.py --calls 2000 --concurrency 20

Each client makes `--calls` fetch calls, `--concurrency` at a time, over its own kept-alive
connections, after 50 not counted; printed: this process's CPU milliseconds per call (the
simulator's CPU is its own process's), and the ratio. Run it a few times: report the median.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.throughput import _wait_until_listening, simulator_process

BODY = {"key": "bench-key"}


async def _cpu_per_call(call: Callable[[], Awaitable[int]], calls: int, concurrency: int) -> float:
    for _ in range(50):
        await call()
    started = time.process_time()

    async def worker(count: int) -> None:
        for _ in range(count):
            await call()

    share, extra = divmod(calls, concurrency)
    await asyncio.gather(*(worker(share + (k < extra)) for k in range(concurrency)))
    return (time.process_time() - started) * 1000 / calls


async def measure(port: int, calls: int, concurrency: int) -> dict[str, float]:
    await _wait_until_listening(port)
    url = f"http://127.0.0.1:{port}/api/v6/image_editing/fetch/1"
    async with httpx.AsyncClient(timeout=30) as client:

        async def with_httpx() -> int:
            response = await client.post(url, json=BODY)
            response.json()
            return response.status_code

        httpx_ms = await _cpu_per_call(with_httpx, calls, concurrency)
    async with aiohttp.ClientSession() as session:

        async def with_aiohttp() -> int:
            async with session.post(url, json=BODY) as response:
                await response.json(content_type=None)
                return response.status

        aiohttp_ms = await _cpu_per_call(with_aiohttp, calls, concurrency)
    return {"httpx": httpx_ms, "aiohttp": aiohttp_ms}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    with simulator_process(args.concurrency) as port:
        figures = asyncio.run(measure(port, args.calls, args.concurrency))
    print(f"calls={args.calls} concurrency={args.concurrency} (fetch of an unknown job: a 404)")
    for name, ms in figures.items():
        print(f"{name:>8}: {ms:.3f} ms CPU per call")
    print(f"httpx / aiohttp: {figures['httpx'] / figures['aiohttp']:.1f}")


if __name__ == "__main__":
    main()
