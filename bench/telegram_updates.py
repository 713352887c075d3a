"""Telegram under a burst of webhook posts: how fast the bot answers N `/headshot` photos with
its first status message, with Telegram's flood limits paced (production) and without.

    python bench/telegram_updates.py                    # 500 updates, 3 runs of each mode
    python bench/telegram_updates.py --n 50 --runs 1    # a quick look

Three processes per run, so that the fakes do not eat the bot's CPU:

* this one: the bot, HeadshotApp + TelegramAdapter (the real python-telegram-bot) in webhook
  mode (PUBLIC_BASE_URL = the bot's own loopback address), SQLite in a temporary directory,
  production timings (`edit_interval` 2.0 s, the engine's own polls, provider webhooks);
* the fake Bot API (`tests/fake_telegram.py`), this script with `--serve fake`; a small
  control app on loopback prepares the users and their photos and posts the updates;
* the ModelsLab simulator, this script with `--serve simulator`, taking --cap jobs at once and
  finishing each after --processing-seconds.

Both helpers stop when their stdin closes, so they cannot outlive this process.

N users, each in their private chat with the bot (added and marked started), each send a
256x320 JPEG captioned `/headshot studio`. The fake's own webhook pusher posts one update at a
time; real Telegram uses up to `max_connections` (40 by default) connections at once, so the
fake's process posts the updates itself over 40 connections, with the webhook's secret header.
The fake's pusher never sees them: the messages are made before the bot sets its webhook and
the pending updates are then dropped (deleteWebhook with drop_pending_updates).

Per update, the delay is from its POST leaving for the bot's webhook to the fake receiving the
bot's first sendMessage replying to that message (`reply_parameters.message_id`): both
time.monotonic() in the fake's process. Printed per run and as medians over --runs runs, for
each of two rate limiters:

* production: the adapter's default pacing (one replica: AIORateLimiter at 30 messages/s
  overall, 20/min per group, flood-control answers waited out and retried 3 times);
* unpaced: AIORateLimiter(overall_max_rate=0, group_max_rate=0, max_retries=3), the bot's own
  capacity.

Figures: updates/s (N over the time from the first post to the last first status message),
p50 / p99 / max of update -> first status message, how many got one, and how many jobs ended
with a result photo at the fake within --result-window seconds of the first post (counted, not
required; the same window in both modes), and the bot's CPU per update from the first post to
the end of that window (this process's user and system time). Also per run: how long the posts
took, posts the bot did not answer 2xx, the Bot API calls made and any answers other than 200,
the bot's WARNING-or-worse log records (printed to stderr as they happen), the simulator's (its
webhooks to the bot failing, say), and how long the adapter took to stop at the end, with every
job's delivery still in flight.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import signal
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from aiohttp import web
from telegram.ext import AIORateLimiter

# `python bench/telegram_updates.py` puts bench/ on sys.path, not the repository root: add the
# root so that the project's packages and the helpers of bench/throughput.py can be imported.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from adapters.telegram import TelegramAdapter
from adapters.telegram.adapter import SECRET_HEADER
from adapters.telegram.delivery import EDIT_INTERVAL
from backends.modelslab.simulator import Simulator, SimulatorConfig
from bench.throughput import _free_port, _percentile
from bot.app import HeadshotApp
from bot.collector import settle_after_start_up, undo_settling
from bot.config import Settings, load_settings
from bot.logs import setup_logging
from tests.conftest import make_image
from tests.fake_telegram import Call, FakeTelegram

FIRST_USER = 70_000_001
FIRST_UPDATE = 500_000_001
CAPTION = "/headshot studio"
CONNECTIONS = 40  # Telegram's default max_connections for a webhook
POST_TIMEOUT = 60.0  # for one webhook POST to be answered
STATUS_TIMEOUT = 300.0  # from the first post, for every first status message
POLL_SECONDS = 0.05  # how often the fake's control app looks at the calls made
PRODUCTION, UNPACED = "production", "unpaced"
MODES = (PRODUCTION, UNPACED)
RESULT_METHODS = frozenset({"sendPhoto", "sendDocument", "sendMediaGroup"})
JSONDict = dict[str, Any]


# ---- helper processes: the fake Bot API and the simulator -----------------------------------


class LogCount(logging.Handler):
    """Counts WARNING-or-worse records by logger and message template."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.records[f"{record.levelname} {record.name}: {str(record.msg)[:70]}"] += 1


async def serve(args: argparse.Namespace) -> None:
    """Run one helper until stdin closes (or SIGTERM); print its control port first."""
    setup_logging("WARNING", [])
    # The bot's stop at the end of a run cuts the requests it still has in flight (a progress
    # edit, a status message's removal): aiohttp would log each as an error of the fake's.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    app = web.Application()
    async with contextlib.AsyncExitStack() as stack:
        if args.serve == "fake":
            fake = await stack.enter_async_context(FakeTelegram())
            FakeControl(fake).add_routes(app)
        else:
            config = SimulatorConfig(
                processing_seconds=args.processing_seconds, max_queued=args.cap
            )
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


class FakeControl:
    """GET /info, POST /prepare {n}, POST /fire {timeout}, GET /results."""

    def __init__(self, fake: FakeTelegram) -> None:
        self.fake = fake
        self.updates: list[JSONDict] = []
        self.message_ids: dict[int, int] = {}  # chat (= user) -> their photo message's id
        self.status_at: dict[int, float] = {}  # chat -> the first status message's arrival
        self.status_text: dict[int, str] = {}
        self.results: set[int] = set()  # chats shown a result
        self.refused: Counter[str] = Counter()  # "method status" of answers other than 200
        self.methods: Counter[str] = Counter()
        self.scanned = 0

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/info", self.info)
        app.router.add_post("/prepare", self.prepare)
        app.router.add_post("/fire", self.fire)
        app.router.add_get("/results", self.report)

    async def info(self, _: web.Request) -> web.Response:
        return web.json_response({"api_base": self.fake.api_base, "token": self.fake.token})

    async def prepare(self, request: web.Request) -> web.Response:
        """N users send their photo; the updates are kept here, not in the fake's queue."""
        n = int((await request.json())["n"])
        fake = self.fake
        if fake.webhook is not None:
            raise web.HTTPConflict(text="prepare before the bot sets its webhook")
        photo = make_image(fmt="JPEG")
        for k in range(n):
            user = FIRST_USER + k
            fake.add_user(user, f"User{k}")
            fake.started.add(user)
            message = fake.send_photo(user, user, photo, caption=CAPTION)
            self.message_ids[user] = message["message_id"]
            self.updates.append({"update_id": FIRST_UPDATE + k, "message": message})
        # The messages were queued as updates too: drop them, as a bot setting a webhook with
        # drop_pending_updates would, so that the fake's one-at-a-time pusher has none.
        url = f"{fake.api_base}/bot{fake.token}/deleteWebhook"
        async with (
            aiohttp.ClientSession() as session,
            session.post(url, json={"drop_pending_updates": True}) as response,
        ):
            response.raise_for_status()
        return web.json_response({"prepared": n})

    async def fire(self, request: web.Request) -> web.Response:
        """POST every update to the webhook over 40 connections; wait for the status messages."""
        timeout = float((await request.json())["timeout"])
        hook = self.fake.webhook
        if hook is None:
            raise web.HTTPConflict(text="the bot set no webhook")
        headers = {"Content-Type": "application/json"}
        if hook["secret_token"] is not None:
            headers[SECRET_HEADER] = hook["secret_token"]
        bodies = [json.dumps(update).encode() for update in self.updates]
        posted_at = [0.0] * len(bodies)
        answered = [0] * len(bodies)  # the bot's HTTP status; 0: no answer
        waiting = iter(range(len(bodies)))
        connector = aiohttp.TCPConnector(limit=CONNECTIONS)
        session_timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT)

        async def connection(session: aiohttp.ClientSession) -> None:
            for index in waiting:  # shared: each update is posted once
                posted_at[index] = time.monotonic()
                try:
                    async with session.post(
                        hook["url"], data=bodies[index], headers=headers
                    ) as response:
                        await response.read()
                        answered[index] = response.status
                except (aiohttp.ClientError, TimeoutError):
                    answered[index] = 0

        async with aiohttp.ClientSession(connector=connector, timeout=session_timeout) as session:
            await asyncio.gather(*(connection(session) for _ in range(CONNECTIONS)))
        posted_in = time.monotonic() - min(posted_at, default=0.0)
        deadline = min(posted_at, default=0.0) + timeout
        # Polled rather than re-checked on every change: the fake's own work stays small.
        while len(self.status_at) < len(self.updates) and time.monotonic() < deadline:
            self.scan()
            await asyncio.sleep(POLL_SECONDS)
        self.scan()
        users = [update["message"]["chat"]["id"] for update in self.updates]
        return web.json_response(
            {
                "posted_in": posted_in,
                "failed_posts": sum(not 200 <= status < 300 for status in answered),
                "posts": [
                    {"posted_at": at, "status_at": self.status_at.get(user)}
                    for user, at in zip(users, posted_at, strict=True)
                ],
                "texts": Counter(text[:40] for text in self.status_text.values()),
            }
        )

    async def report(self, _: web.Request) -> web.Response:
        self.scan()
        return web.json_response(
            {
                "results": len(self.results),
                "refused": self.refused,
                "methods": self.methods,
            }
        )

    def scan(self) -> None:
        """Look at the calls made since the last look (up to one not answered yet)."""
        calls = self.fake.calls
        while self.scanned < len(calls) and calls[self.scanned].status != 0:
            self.note(calls[self.scanned])
            self.scanned += 1

    def note(self, call: Call) -> None:
        self.methods[call.method] += 1
        if call.status != 200:
            self.refused[f"{call.method} {call.status}"] += 1
            return
        chat = call.params.get("chat_id")
        if not isinstance(chat, int) or chat not in self.message_ids:
            return
        if call.method == "sendMessage" and chat not in self.status_at:
            replying = call.params.get("reply_parameters")
            replied = replying.get("message_id") if isinstance(replying, dict) else None
            replied = replied or call.params.get("reply_to_message_id")
            if replied == self.message_ids[chat]:
                self.status_at[chat] = call.at
                self.status_text[chat] = str(call.params.get("text", ""))
        elif call.method in RESULT_METHODS:
            self.results.add(chat)


class SimulatorControl:
    """GET /info; POST /quiet: how many warnings the simulator logged, and none from now on
    (the bot stops next, and the jobs still at the simulator would fail to reach it)."""

    def __init__(self, simulator: Simulator) -> None:
        self.simulator = simulator
        self.warnings = LogCount()
        self.logger = logging.getLogger(Simulator.__module__)
        self.logger.addHandler(self.warnings)

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/info", self.info)
        app.router.add_post("/quiet", self.quiet)

    async def info(self, _: web.Request) -> web.Response:
        return web.json_response({"base_url": self.simulator.base_url})

    async def quiet(self, _: web.Request) -> web.Response:
        self.logger.setLevel(logging.CRITICAL)
        return web.json_response({"warnings": self.warnings.records})


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
async def helper(kind: str, args: argparse.Namespace) -> AsyncIterator[Helper]:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, __file__, "--serve", kind, "--cap", str(args.cap)),
        *("--processing-seconds", str(args.processing_seconds)),
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
        async with httpx.AsyncClient(base_url=base, timeout=STATUS_TIMEOUT + 60) as http:
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


@dataclass
class Run:
    mode: str
    n: int
    delays_ms: list[float]  # update -> first status message, for those that got one
    span_s: float  # first post -> last first status message
    posted_in_s: float
    failed_posts: int
    texts: Counter[str]
    results: int  # within the results window
    refused: Counter[str]
    methods: Counter[str]
    # The bot's CPU (this process: the service and the adapter) from the first post to the end
    # of the results window, per update.
    cpu_ms_per_update: float = float("nan")
    log: Counter[str] = field(default_factory=Counter)
    simulator_log: Counter[str] = field(default_factory=Counter)
    stop_s: float = float("nan")  # how long the adapter took to stop, deliveries in flight

    def figures(self) -> dict[str, float]:
        return {
            "updates/s": self.n / self.span_s if self.span_s > 0 else float("nan"),
            **_spread(self.delays_ms),
            "status": len(self.delays_ms),
            "results": self.results,
            "CPU ms/upd": self.cpu_ms_per_update,
        }


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return dict.fromkeys(("p50 ms", "p99 ms", "max ms"), float("nan"))
    return {
        "p50 ms": _percentile(values, 50),
        "p99 ms": _percentile(values, 99),
        "max ms": max(values),
    }


def bot_settings(workdir: Path, port: int, cap: int, sim_url: str, telegram: JSONDict) -> Settings:
    """Production settings but for where things are: the bot on `port`, its own public address
    (so, webhook mode), the simulator and the fake Bot API."""
    return load_settings(
        data_dir=workdir,
        database_url=f"sqlite+aiosqlite:///{workdir / 'bench.db'}",
        modelslab_base_url=sim_url,
        modelslab_api_key="bench-key",
        modelslab_max_queued=cap,
        web_port=port,
        public_base_url=f"http://127.0.0.1:{port}",
        telegram_bot_token=telegram["token"],
        telegram_api_base=telegram["api_base"],
        log_level="WARNING",
        # The generated selfie has no face: the face check and the identity gate are off.
        face_check=False,
        identity_gate=False,
    )


async def one_run(args: argparse.Namespace, mode: str) -> Run:
    with tempfile.TemporaryDirectory(prefix="telegram-updates-") as tmp:
        async with helper("fake", args) as fake, helper("simulator", args) as sim:
            await fake.post("/prepare", {"n": args.n})
            port = _free_port()
            sim_url = (await sim.get("/info"))["base_url"]
            settings = bot_settings(Path(tmp), port, args.cap, sim_url, await fake.get("/info"))
            limiter = (
                None  # the adapter's own default
                if mode == PRODUCTION
                else AIORateLimiter(overall_max_rate=0, group_max_rate=0, max_retries=3)
            )
            counter = LogCount()
            logging.getLogger().addHandler(counter)
            try:
                async with HeadshotApp(settings) as app:
                    adapter = TelegramAdapter(
                        app.commands, app.settings, app.chat_webhooks, rate_limiter=limiter
                    )
                    await adapter.start()
                    try:
                        settle_after_start_up()  # as `headshot-bot run` does once it has started
                        run = await measure(args, mode, fake)
                        run.simulator_log = Counter((await sim.post("/quiet", {}))["warnings"])
                    finally:
                        stopping = time.monotonic()
                        await adapter.stop()
                        undo_settling()
                    run.stop_s = time.monotonic() - stopping
            finally:
                logging.getLogger().removeHandler(counter)
            run.log = counter.records
            return run


async def measure(args: argparse.Namespace, mode: str, fake: Helper) -> Run:
    cpu = os.times()
    fired = await fake.post("/fire", {"timeout": STATUS_TIMEOUT})
    posts = fired["posts"]
    first = min(post["posted_at"] for post in posts)
    answered = [post for post in posts if post["status_at"] is not None]
    delays = [(post["status_at"] - post["posted_at"]) * 1000 for post in answered]
    last = max((post["status_at"] for post in answered), default=first)
    # time.monotonic() is the machine's CLOCK_MONOTONIC: the fake's readings compare with ours.
    deadline = first + args.result_window
    while True:
        report = await fake.get("/results")
        if report["results"] >= args.n or time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(0.25, max(0.0, deadline - time.monotonic())))
    spent = os.times()
    return Run(
        mode=mode,
        n=args.n,
        delays_ms=delays,
        span_s=last - first,
        posted_in_s=fired["posted_in"],
        failed_posts=fired["failed_posts"],
        texts=Counter(fired["texts"]),
        results=report["results"],
        refused=Counter(report["refused"]),
        methods=Counter(report["methods"]),
        cpu_ms_per_update=(spent.user + spent.system - cpu.user - cpu.system) * 1000 / args.n,
    )


# ---- report ----------------------------------------------------------------------------------


def machine_line() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"machine: {os.cpu_count()} CPUs, load average {load}; Python "
        f"{platform.python_version()} on {platform.platform(terse=True)}"
    )


def settings_line(args: argparse.Namespace) -> str:
    return (
        f"settings: n={args.n} updates (distinct users in private chats, a 256x320 JPEG "
        f"captioned {CAPTION!r} each) posted to the webhook over {CONNECTIONS} connections, "
        f"runs={args.runs} per mode, MODELSLAB_MAX_QUEUED={args.cap} (simulator max_queued="
        f"{args.cap}, processing {args.processing_seconds:g} s), results counted within "
        f"{args.result_window:g} s of the first post, edit_interval={EDIT_INTERVAL} s, "
        f"SQLite file, production engine timings, webhook mode; modes: {PRODUCTION} = the "
        f"adapter's default AIORateLimiter (30/s overall, 20/min per group), {UNPACED} = "
        f"AIORateLimiter(overall_max_rate=0, group_max_rate=0, max_retries=3)"
    )


COLUMNS = ("updates/s", "p50 ms", "p99 ms", "max ms", "status", "results", "CPU ms/upd")


def header() -> str:
    return f"{'mode':<11} {'run':>6} " + " ".join(f"{name:>10}" for name in COLUMNS)


def row(mode: str, label: str, figures: dict[str, float]) -> str:
    cells = []
    for name in COLUMNS:
        value = figures[name]
        decimals = 1 if name in ("updates/s", "CPU ms/upd") else 0
        cells.append(f"{value:>10.{decimals}f}")
    return f"{mode:<11} {label:>6} " + " ".join(cells)


def notes(index: int, run: Run) -> str:
    """What else happened in a run, on one line."""
    parts = [
        f"posted in {run.posted_in_s:.2f} s",
        f"{run.failed_posts} posts not 2xx",
        f"{run.results}/{run.n} results within the window",
    ]
    if set(run.texts) != {"Got it: one moment…"}:
        parts.append(f"first words {dict(run.texts)}")
    calls = ", ".join(f"{method} {count}" for method, count in run.methods.most_common())
    parts.append(f"Bot API calls: {calls}")
    parts.append(f"non-200 answers: {dict(run.refused) or 'none'}")
    log = sum(run.log.values())
    parts.append(f"bot log W/E: {log}" + (f" {dict(run.log.most_common(3))}" if log else ""))
    parts.append(f"adapter stopped in {run.stop_s:.1f} s")
    warned = sum(run.simulator_log.values())
    if warned:
        parts.append(f"simulator log W/E: {warned} {dict(run.simulator_log.most_common(3))}")
    return f"  {run.mode} run {index}: " + "; ".join(parts)


def print_table(runs: dict[str, list[Run]]) -> None:
    print(header())
    medians: dict[str, dict[str, float]] = {}
    for mode, done in runs.items():
        table = [run.figures() for run in done]
        for index, figures in enumerate(table, start=1):
            print(row(mode, str(index), figures))
        medians[mode] = {name: statistics.median(f[name] for f in table) for name in COLUMNS}
        print(row(mode, "median", medians[mode]))
    paced, unpaced = medians.get(PRODUCTION), medians.get(UNPACED)
    if paced and unpaced:
        ratio = {
            name: unpaced[name] / paced[name] if paced[name] else float("nan") for name in COLUMNS
        }
        print(
            f"{UNPACED} / {PRODUCTION} (medians): updates/s x{ratio['updates/s']:.2f}, "
            f"p50 x{ratio['p50 ms']:.2f}, p99 x{ratio['p99 ms']:.2f}, max x{ratio['max ms']:.2f}"
        )


# ---- entry point -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--n", type=int, default=500, help="updates (users) per run")
    parser.add_argument("--runs", type=int, default=3, help="runs of each mode")
    parser.add_argument("--cap", type=int, default=100, help="MODELSLAB_MAX_QUEUED (≤ 100)")
    parser.add_argument("--processing-seconds", type=float, default=1.0, help="per job")
    parser.add_argument(
        "--result-window",
        type=float,
        default=40.0,
        help="results are counted up to this many s after the first post",
    )
    parser.add_argument("--serve", choices=("fake", "simulator"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if min(args.n, args.runs, args.cap) < 1 or args.cap > 100:
        parser.error("--n, --runs, --cap: at least 1 (--cap at most 100)")
    if args.processing_seconds < 0 or args.result_window < 0:
        parser.error("--processing-seconds, --result-window: not negative")
    return args


async def bench(args: argparse.Namespace) -> None:
    # SIGTERM cancels the run, so that the bot stops and the temporary directory goes.
    this = asyncio.current_task()
    assert this is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, this.cancel)
    print(machine_line())
    print(settings_line(args), flush=True)
    runs: dict[str, list[Run]] = {mode: [] for mode in MODES}
    for index in range(1, args.runs + 1):
        for mode in MODES:  # interleaved, so that a drift in the machine's load hits both
            run = await one_run(args, mode)
            runs[mode].append(run)
            print(notes(index, run), flush=True)
    print_table(runs)


def main() -> None:
    args = parse_args()
    if args.serve:
        asyncio.run(serve(args))
        return
    setup_logging("WARNING", [])
    started = time.perf_counter()
    try:
        asyncio.run(bench(args))
    except asyncio.CancelledError:
        raise SystemExit(143) from None
    print(f"wall time: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
