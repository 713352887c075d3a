"""Discord under a burst: time to acknowledge N concurrent `/headshot` interactions, and time
from the provider completing a job to the final message reaching Discord.

    python bench/discord_ack.py                      # 500 interactions, 3 runs
    python bench/discord_ack.py --n 50 --runs 1      # a quick look
    python bench/discord_ack.py --faces both         # the face check and gate off, then on

Three processes per run, so that the fakes do not eat the bot's CPU:

* this one: the bot, HeadshotApp + DiscordAdapter (the real discord.py), SQLite in a temporary
  directory, production timings (`edit_interval` 2.0 s, polls of 1-30 s, webhooks);
* the fake Discord (`tests/fake_discord.py`), this script with `--serve fake`; a small control
  app on loopback fires the commands and reports what arrived;
* the ModelsLab simulator, this script with `--serve simulator`; it holds every job (an hour of
  processing) until its control app is told to complete some, and notes when it did.

Both helpers stop when their stdin closes, so they cannot outlive this process.

With `--faces on` the bot runs with the face check on intake and the identity gate on output
(the defaults of `headshot-bot run`), and every user sends the example selfie; `--faces both`
alternates off and on, run by run, in one invocation, and sends the example selfie in both, so
that the two are measured alike. `--faces off` (the default) sends the generated JPEG with the
check and gate off, as before they existed.

Figures, per run and the median over --runs runs:

1. acknowledgement: N users (distinct, so no per-user limit refuses them) each run `/headshot`
   with a 256×320 JPEG attached, all fired at once through the gateway. Delay = the fake's
   `acked_at - sent_at` (time.monotonic() in the fake's process: the INTERACTION_CREATE frame
   going out to the deferral arriving). Printed: p50 / p99 / max in ms (aim: p99 ≤ 300 ms at 500
   concurrent), how many were acknowledged, how many answers were "Got it…" (queued) and how
   many were refusals, how long until every answer was in, and the bot's CPU per interaction
   over that time (this process's user and system time).
2. completion -> final message: with the provider full (--cap jobs at the simulator, the rest
   waiting in the bot's dispatcher), the simulator completes --complete of them, oldest first,
   at --rate per second, noting time.time() at each; the fake Discord notes the wall-clock time
   at which the edit carrying the result ("Done: …" embed and its image) arrived (the message's
   `edited_at`). Both clocks are this machine's. The figure includes the simulator's webhook
   tick (up to 20 ms), the fetch, the re-host of the image and its upload to Discord.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

# `python bench/discord_ack.py` puts bench/ on sys.path, not the repository root: add the root
# so that the project's packages and bench/throughput.py's helpers can be imported.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.discord import DiscordAdapter
from adapters.discord.delivery import EDIT_INTERVAL
from backends.modelslab.simulator import Simulator, SimulatorConfig
from bench.throughput import _percentile, _selfie, bench_settings
from bot.app import HeadshotApp, Overrides
from bot.collector import settle_after_start_up, undo_settling
from bot.logs import setup_logging
from bot.ui import short_id
from tests.fake_discord import FakeDiscord, Interaction

EXAMPLE_SELFIE = Path(__file__).resolve().parent.parent / "examples" / "astronaut.jpg"
GUILD = 1_180_000_000_000_000_001
FIRST_USER = 10_000
HOLD_SECONDS = 3600.0  # the simulator finishes nothing by itself
SETTLE_SECONDS = 3.0  # after the provider fills up, before completing: > one edit interval
ANSWER_TIMEOUT = 300.0  # for every interaction to be acknowledged and answered
RESULT_TIMEOUT = 120.0  # after the last completion, for the last final message
JSONDict = dict[str, Any]


# ---- helper processes: the fake Discord and the simulator -----------------------------------


async def serve(kind: str, cap: int) -> None:
    """Run one helper until stdin closes (or SIGTERM); print its control port first."""
    setup_logging("WARNING", [])
    app = web.Application()
    async with contextlib.AsyncExitStack() as stack:
        if kind == "fake":
            fake = await stack.enter_async_context(FakeDiscord())
            fake_routes(app, fake)
        else:
            config = SimulatorConfig(processing_seconds=HOLD_SECONDS, max_queued=cap)
            simulator = Simulator(config)
            await simulator.start()
            stack.push_async_callback(simulator.stop)
            SimulatorControl(simulator).add_routes(app)
        # A request still in flight (a /fire waiting for answers) is cut after 1 s at exit.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(runner.addresses[0][1], flush=True)
        await _until_told_to_stop()


async def _until_told_to_stop() -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    eof = asyncio.create_task(stdin.read())
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({eof, stopped}, return_when=asyncio.FIRST_COMPLETED)
    eof.cancel()
    stopped.cancel()


def fake_routes(app: web.Application, fake: FakeDiscord) -> None:
    """GET /info, POST /fire {n, timeout}, GET /results."""

    async def info(_: web.Request) -> web.Response:
        return web.json_response(
            {"api_base": fake.api_base, "gateway_url": fake.gateway_url, "token": fake.token}
        )

    async def fire(request: web.Request) -> web.Response:
        body = await request.json()
        selfie = EXAMPLE_SELFIE.read_bytes() if body.get("example") else _selfie()
        return web.json_response(await fire_commands(fake, int(body["n"]), body["timeout"], selfie))

    async def results(_: web.Request) -> web.Response:
        return web.json_response(final_messages(fake))

    app.router.add_get("/info", info)
    app.router.add_post("/fire", fire)
    app.router.add_get("/results", results)


async def fire_commands(fake: FakeDiscord, n: int, timeout: float, selfie: bytes) -> JSONDict:  # noqa: ASYNC109
    """N users run `/headshot` at once; wait until each is acknowledged and answered."""
    uploads = [fake.upload(selfie, "selfie.jpg", "image/jpeg") for _ in range(n)]
    interactions = await asyncio.gather(
        *(
            fake.run_command("headshot", {"selfie": upload}, user_id=FIRST_USER + k, guild_id=GUILD)
            for k, upload in enumerate(uploads)
        )
    )
    first_sent = min(i.sent_at for i in interactions)
    deadline = first_sent + timeout
    # Polled rather than re-checked on every change: the fake's own work stays small.
    while time.monotonic() < deadline and not all(  # noqa: ASYNC110
        i.acked_at is not None and answer_of(i) is not None for i in interactions
    ):
        await asyncio.sleep(0.02)
    return {
        "answered_in": time.monotonic() - first_sent,
        "interactions": [
            {
                "id": str(i.id),
                "sent_at": i.sent_at,  # time.monotonic(): comparable across processes here
                "acked_at": i.acked_at,
                "ack": None if i.acked_at is None else i.acked_at - i.sent_at,
                "answer": answer_of(i),
            }
            for i in interactions
        ],
    }


def answer_of(interaction: Interaction) -> str | None:
    """The bot's first words: in the deferred message, or (a private refusal) a follow-up."""
    messages = [interaction.original] if interaction.original is not None else []
    for message in [*messages, *interaction.followups]:
        for edit in message.edits:
            if edit["content"]:
                return str(edit["content"])
    return None


def final_messages(fake: FakeDiscord) -> list[JSONDict]:
    """Every interaction message showing a result: its image's file name and when it came."""
    found = []
    for interaction in fake.interactions.values():
        message = interaction.original
        if message is None or not message.files or message.edited_at is None:
            continue
        if any(str(e.get("description", "")).startswith("Done:") for e in message.embeds):
            found.append({"file": message.files[0].filename, "at": message.edited_at.timestamp()})
    return found


class SimulatorControl:
    """GET /info, POST /complete {count, rate}, GET /completed."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.completed: list[JSONDict] = []
        self.task: asyncio.Task[None] | None = None

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/info", self.info)
        app.router.add_post("/complete", self.complete)
        app.router.add_get("/completed", self.report)

    def processing(self) -> list[str]:
        """Processing jobs, oldest first (the dict keeps submission order)."""
        return [job.id for job in self.simulator.jobs.values() if job.status == "processing"]

    async def info(self, _: web.Request) -> web.Response:
        simulator = self.simulator
        return web.json_response(
            {"base_url": simulator.base_url, "processing": len(self.processing())}
        )

    async def complete(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.task = asyncio.create_task(self._complete(int(body["count"]), float(body["rate"])))
        return web.json_response({"started": True})

    async def report(self, _: web.Request) -> web.Response:
        done = self.task is not None and self.task.done()
        if done and self.task is not None and self.task.exception() is not None:
            return web.json_response({"error": repr(self.task.exception())}, status=500)
        return web.json_response({"done": done, "completed": self.completed})

    async def _complete(self, count: int, rate: float) -> None:
        """Complete `count` jobs, one every 1/rate s on a fixed schedule."""
        started = time.monotonic()
        for k in range(count):
            await asyncio.sleep(max(0.0, started + k / rate - time.monotonic()))
            job_id = await self._next_processing()
            track_id = self.simulator.jobs[job_id].track_id
            self.simulator.complete_now(job_id)
            self.completed.append({"track_id": str(track_id), "at": time.time()})

    async def _next_processing(self, timeout: float = 30.0) -> str:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while not (waiting := self.processing()):
            if time.monotonic() > deadline:
                raise RuntimeError("no job at the provider to complete")
            await asyncio.sleep(0.005)
        return waiting[0]


@dataclass
class Helper:
    """A helper process and an HTTP client for its control app."""

    process: asyncio.subprocess.Process
    http: httpx.AsyncClient

    async def get(self, path: str) -> Any:
        response = await self.http.get(path)
        response.raise_for_status()
        return response.json()

    async def post(self, path: str, body: JSONDict) -> Any:
        response = await self.http.post(path, json=body)
        response.raise_for_status()
        return response.json()


@contextlib.asynccontextmanager
async def helper(kind: str, cap: int) -> AsyncIterator[Helper]:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, __file__, "--serve", kind, "--cap", str(cap)),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "LOG_LEVEL": "WARNING"},
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        if not line.strip().isdigit():
            raise RuntimeError(f"the {kind} helper did not start (said {line!r})")
        base = f"http://127.0.0.1:{int(line)}"
        async with httpx.AsyncClient(base_url=base, timeout=ANSWER_TIMEOUT + 60) as http:
            yield Helper(process, http)
    finally:
        await _stop(process)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.stdin is not None:
        process.stdin.close()
    try:
        await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        process.kill()
        await process.wait()


# ---- one run ---------------------------------------------------------------------------------


QUEUED, NO_ANSWER = "queued", "no answer"


@dataclass
class Run:
    acks_ms: list[float]
    answers: Counter[str]  # QUEUED, NO_ANSWER, or a refusal's first words
    answered_in_s: float
    finals_ms: list[float]
    completed: int  # jobs the simulator completed: the final messages expected
    # The bot's CPU (this process) from firing the interactions to every answer in, per one.
    intake_cpu_ms: float = float("nan")

    @property
    def refusals(self) -> Counter[str]:
        return Counter({k: v for k, v in self.answers.items() if k not in (QUEUED, NO_ANSWER)})

    def figures(self) -> dict[str, float]:
        return {
            **_spread("ack", self.acks_ms),
            "acknowledged": len(self.acks_ms),
            "queued": self.answers[QUEUED],
            "refused": self.refusals.total(),
            "unanswered": self.answers[NO_ANSWER],
            "answered in s": self.answered_in_s,
            "intake CPU ms": self.intake_cpu_ms,
            **_spread("final", self.finals_ms),
            "finals shown": len(self.finals_ms),
        }


def _spread(name: str, values: list[float]) -> dict[str, float]:
    if not values:
        return {f"{name} {q} ms": float("nan") for q in ("p50", "p99", "max")}
    return {
        f"{name} p50 ms": _percentile(values, 50),
        f"{name} p99 ms": _percentile(values, 99),
        f"{name} max ms": max(values),
    }


async def one_run(args: argparse.Namespace, faces: bool) -> Run:
    with tempfile.TemporaryDirectory(prefix="discord-ack-") as tmp:
        async with helper("fake", args.cap) as fake, helper("simulator", args.cap) as sim:
            discord_info = await fake.get("/info")
            sim_port = int((await sim.get("/info"))["base_url"].rsplit(":", 1)[1])
            settings = bench_settings(
                Path(tmp),
                sim_port,
                args.cap,
                log_level="WARNING",
                discord_token=discord_info["token"],
                discord_api_base=discord_info["api_base"],
                discord_gateway_url=discord_info["gateway_url"],
                face_check=faces,
                identity_gate=faces,
            )
            # Production timings; the simulator's webhooks come to the bot's own web server.
            async with HeadshotApp(settings, Overrides(local_webhooks=True)) as app:
                adapter = DiscordAdapter(app.commands, app.settings)
                await adapter.start()
                try:
                    await asyncio.wait_for(adapter.wait_ready(), 30)
                    settle_after_start_up()  # as `headshot-bot run` does once it has started
                    return await measure(args, fake, sim, example=args.faces != "off")
                finally:
                    await adapter.stop()
                    undo_settling()


async def measure(args: argparse.Namespace, fake: Helper, sim: Helper, *, example: bool) -> Run:
    cpu = os.times()
    fired = await fake.post("/fire", {"n": args.n, "timeout": ANSWER_TIMEOUT, "example": example})
    spent = os.times()
    acks = [i["ack"] * 1000 for i in fired["interactions"] if i["ack"] is not None]
    answers = Counter(_kind_of(i["answer"]) for i in fired["interactions"])
    queued = answers[QUEUED]

    at_provider = min(args.cap, queued)
    await _poll(lambda: _processing_is(sim, at_provider), 60, "the provider to fill up")
    await asyncio.sleep(SETTLE_SECONDS)
    sample = min(args.complete, queued)
    await sim.post("/complete", {"count": sample, "rate": args.rate})
    completed = await _wait_completed(sim, sample, sample / args.rate + 60)
    finals = await _wait_finals(fake, completed)
    intake_cpu = (spent.user + spent.system - cpu.user - cpu.system) * 1000 / args.n
    return Run(acks, answers, fired["answered_in"], finals, len(completed), intake_cpu)


def _kind_of(answer: str | None) -> str:
    if answer is None:
        return NO_ANSWER
    if answer.startswith("Got it"):
        return QUEUED
    return answer[:60]


async def _processing_is(sim: Helper, count: int) -> bool:
    return int((await sim.get("/info"))["processing"]) >= count


async def _poll(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:  # noqa: ASYNC109
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def _wait_completed(sim: Helper, count: int, timeout: float) -> dict[str, float]:  # noqa: ASYNC109
    """short id of the bot's job -> when the simulator completed it."""
    report: JSONDict = {}

    async def done() -> bool:
        report.update(await sim.get("/completed"))
        return bool(report["done"])

    await _poll(done, timeout, f"the simulator to complete {count} jobs")
    return {short_id(c["track_id"]): c["at"] for c in report["completed"]}


async def _wait_finals(fake: Helper, completed: dict[str, float]) -> list[float]:
    """Milliseconds from completion to the final message, for each completed job shown."""
    arrived: dict[str, float] = {}

    async def all_shown() -> bool:
        for result in await fake.get("/results"):
            arrived.setdefault(result["file"].rsplit("-", 1)[0], result["at"])
        return completed.keys() <= arrived.keys()

    with contextlib.suppress(RuntimeError):  # report what arrived, and how many did not
        await _poll(all_shown, RESULT_TIMEOUT, "the final messages")
    return [(arrived[job] - at) * 1000 for job, at in completed.items() if job in arrived]


# ---- report ----------------------------------------------------------------------------------


def machine_line() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} CPUs, load average {load}; Python "
        f"{platform.python_version()} on {platform.platform(terse=True)}"
    )


def settings_line(args: argparse.Namespace) -> str:
    return (
        f"settings: n={args.n} concurrent /headshot (distinct users, one guild, "
        f"{'the example selfie' if args.faces != 'off' else 'a 256x320 JPEG'} each), "
        f"faces={args.faces}, runs={args.runs}, MODELSLAB_MAX_QUEUED={args.cap} "
        f"(simulator max_queued="
        f"{args.cap}, holds each job {HOLD_SECONDS:.0f} s), complete={args.complete} at "
        f"{args.rate:g}/s after a {SETTLE_SECONDS:g} s settle, edit_interval={EDIT_INTERVAL} s, "
        f"SQLite file, production engine timings, webhooks"
    )


def print_run(index: int, run: Run, n: int) -> None:
    f = run.figures()
    print(
        f"run {index}: ack p50 {f['ack p50 ms']:.0f} / p99 {f['ack p99 ms']:.0f} / max "
        f"{f['ack max ms']:.0f} ms, {len(run.acks_ms)}/{n} acknowledged; answers: "
        f"{f['queued']:.0f} queued, {f['refused']:.0f} refused, {f['unanswered']:.0f} none"
        + (f" (refusals: {dict(run.refusals)})" if run.refusals else "")
        + f", all in by {run.answered_in_s:.1f} s ({run.intake_cpu_ms:.1f} ms of the bot's CPU "
        "each); completion -> final message p50 "
        f"{f['final p50 ms']:.0f} / p99 {f['final p99 ms']:.0f} / max {f['final max ms']:.0f} "
        f"ms, {len(run.finals_ms)}/{run.completed} shown",
        flush=True,
    )


def print_medians(runs: list[Run]) -> None:
    print(f"median of {len(runs)} run(s):")
    table = [run.figures() for run in runs]
    for name in table[0]:
        values = [figures[name] for figures in table]
        per_run = " ".join(f"{value:.1f}" for value in values)
        print(f"  {name:>14}: {statistics.median(values):8.1f}   (runs: {per_run})")


# ---- entry point -----------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="concurrent interactions")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cap", type=int, default=100, help="MODELSLAB_MAX_QUEUED (≤ 100)")
    parser.add_argument("--complete", type=int, default=100, help="jobs completed per run")
    parser.add_argument("--rate", type=float, default=10.0, help="completions per second")
    parser.add_argument(
        "--faces",
        choices=("off", "on", "both"),
        default="off",
        help="the face check and identity gate: off, on, or both (alternating runs)",
    )
    parser.add_argument("--serve", choices=("fake", "simulator"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if min(args.n, args.runs, args.cap, args.complete) < 1 or args.rate <= 0:
        parser.error("--n, --runs, --cap, --complete: at least 1; --rate: above 0")
    return args


async def bench(args: argparse.Namespace) -> None:
    # SIGTERM cancels the run, so that the bot stops and the temporary directory goes.
    this = asyncio.current_task()
    assert this is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, this.cancel)
    print(machine_line())
    print(settings_line(args), flush=True)
    modes = {"off": [False], "on": [True], "both": [False, True]}[args.faces]
    runs: dict[bool, list[Run]] = {faces: [] for faces in modes}
    for index in range(1, args.runs + 1):
        for faces in modes:
            run = await one_run(args, faces)
            print(f"faces {'on' if faces else 'off'}: ", end="")
            print_run(index, run, args.n)
            runs[faces].append(run)
    for faces, done in runs.items():
        print(f"faces {'on' if faces else 'off'}: ", end="")
        print_medians(done)


def main() -> None:
    args = parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.cap))
        return
    setup_logging("WARNING", [])
    # discord.py's start-up notes (no guild intent, no voice) are expected here.
    for chatty in ("discord.client", "discord.state"):
        logging.getLogger(chatty).setLevel(logging.ERROR)
    started = time.perf_counter()
    try:
        asyncio.run(bench(args))
    except asyncio.CancelledError:
        raise SystemExit(143) from None
    print(f"wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
