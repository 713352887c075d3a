"""Several real `headshot-bot run` processes on one database, behind a small load balancer: the
cluster as an operator runs it, for the cluster tests and for `bench/cluster.py` and
`bench/chaos.py`.

Each replica is a child process (`python -m bot run`) with its own web port, all with the same
settings: one database, one shared image folder, one pseudonym key, Telegram in webhook mode
(PUBLIC_BASE_URL is the balancer), and the ModelsLab simulator and the fake Telegram Bot API of
the calling process. The balancer hands each request to the next replica in turn, skipping one
that refuses the connection (killed), as nginx's round-robin does with `proxy_next_upstream`:
Telegram's updates and ModelsLab's webhooks reach the replicas in turn. A replica that answers 503
(starting, or stopping) is skipped too, as `proxy_next_upstream http_503` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import secrets
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.fake_telegram import FakeTelegram

HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Balancer:
    """Round-robin over the replicas' ports; a replica that refuses the connection is skipped."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.url = ""
        self.served: Counter[int] = Counter()  # port -> requests answered
        self._turn = itertools.count()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{path:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60))
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        first = next(self._turn)
        for offset in range(len(self.ports)):
            port = self.ports[(first + offset) % len(self.ports)]
            url = f"http://127.0.0.1:{port}{request.path_qs}"
            try:
                async with self._session.request(
                    request.method, url, data=body, headers=headers, allow_redirects=False
                ) as answer:
                    payload = await answer.read()
                    if answer.status == 503 and offset + 1 < len(self.ports):
                        continue  # starting or stopping: the next one (nginx: http_503)
                    self.served[port] += 1
                    kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_HEADERS}
                    return web.Response(status=answer.status, body=payload, headers=kept)
            except aiohttp.ClientConnectorError:
                continue  # down (killed, or not started yet): the next one
            except (aiohttp.ClientError, TimeoutError):
                return web.Response(status=502, text="the replica broke off")
        return web.Response(status=502, text="no replica is up")


@dataclass
class Replica:
    name: str
    port: int
    env: dict[str, str]
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    kills: int = 0

    async def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                "run",
                env=self.env,
                stdout=log,
                stderr=log,
            )
        finally:
            log.close()
        self.starts += 1

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def wait_healthy(self, within: float = 60.0) -> None:
        url = f"http://127.0.0.1:{self.port}/healthz"
        deadline = asyncio.get_running_loop().time() + within
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
            while True:
                if not self.running:
                    tail = self.log_path.read_text(errors="replace")[-3000:]
                    raise AssertionError(f"{self.name} exited at start; its log ends:\n{tail}")
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(url) as answer:
                        if answer.status == 200:
                            return
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"{self.name} never became healthy; see {self.log_path}")
                await asyncio.sleep(0.1)

    async def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a crash or an OOM kill."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        self.kills += 1

    async def stop(self) -> int | None:
        """SIGTERM and wait: the exit status (0 for a clean stop)."""
        if not self.running:
            return None if self.process is None else self.process.returncode
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(30):
                return await self.process.wait()
        except TimeoutError:
            self.process.kill()
            return await self.process.wait()


@dataclass
class Cluster:
    """`replicas` bot processes on `database_url`, behind a balancer, sharing `workdir`."""

    database_url: str
    workdir: Path
    simulator_url: str
    telegram: FakeTelegram
    replicas: int = 3
    api_key: str = "test-key"
    settings: Mapping[str, str] = field(default_factory=dict)
    balancer: Balancer = field(init=False)
    members: list[Replica] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        self.balancer = Balancer([free_port() for _ in range(self.replicas)])

    def _env(self, port: int) -> dict[str, str]:
        return {
            **os.environ,
            "DATABASE_URL": self.database_url,
            "DATA_DIR": str(self.workdir / "data"),
            "IMAGE_STORE_SHARED": "1",
            "PSEUDONYM_KEY": self._key,
            "MODELSLAB_BASE_URL": self.simulator_url,
            "MODELSLAB_API_KEY": self.api_key,
            "MODELSLAB_MAX_QUEUED": "5",
            "TELEGRAM_BOT_TOKEN": self.telegram.token,
            "TELEGRAM_API_BASE": self.telegram.api_base,
            "WEB_PORT": str(port),
            "PUBLIC_BASE_URL": self.balancer.url,
            "DAILY_QUOTA": "1000",
            # The cluster's selfies are generated pictures with no face in them.
            "FACE_CHECK": "0",
            "IDENTITY_GATE": "0",
            "MAX_ACTIVE_PER_USER": "100",
            "SELFIE_RETENTION_SECONDS": "0",
            "JOB_LEASE_SECONDS": "3",
            "LOG_LEVEL": "INFO",
            **self.settings,
        }

    async def start(self) -> None:
        self._key = secrets.token_hex(32)
        await self.balancer.start()
        for n, port in enumerate(self.balancer.ports):
            name = f"replica-{n}"
            log_path = self.workdir / f"{name}.log"
            self.members.append(Replica(name, port, self._env(port), log_path))
        # The first one migrates the database and registers the webhook; then the others.
        await self.members[0].start()
        await self.members[0].wait_healthy()
        for replica in self.members[1:]:
            await replica.start()
        await asyncio.gather(*(replica.wait_healthy() for replica in self.members[1:]))

    async def restart(self, replica: Replica) -> None:
        await replica.start()
        await replica.wait_healthy()

    async def stop(self) -> list[int | None]:
        codes = await asyncio.gather(*(replica.stop() for replica in self.members))
        await self.balancer.stop()
        return list(codes)

    def logs(self) -> str:
        return "\n".join(
            f"--- {replica.name} ---\n{replica.log_path.read_text(errors='replace')[-4000:]}"
            for replica in self.members
            if replica.log_path.exists()
        )


def result_counts(
    telegram: FakeTelegram,
    requests: Mapping[int, list[int]],
    prefixes: str | tuple[str, ...] = "Done:",
) -> Counter[tuple[int, int]]:
    """How many results ("Done: …" replies, or others that start with `prefixes`) each request
    got: {(chat id, message id): count}, for requests given as {chat id: [their message ids]}
    (a private chat's id is its user's)."""
    counts: Counter[tuple[int, int]] = Counter(
        {(chat_id, m): 0 for chat_id, ids in requests.items() for m in ids}
    )
    for chat_id in requests:
        for message in telegram.bot_messages(chat_id):
            text = str(message.get("caption") or message.get("text") or "")
            replied = (message.get("reply_to_message") or {}).get("message_id")
            if text.startswith(prefixes) and (chat_id, replied) in counts:
                counts[chat_id, replied] += 1
    return counts


async def wait_until(condition: Callable[[], object], within: float, every: float = 0.1) -> None:
    """Poll `condition` until it is true; TimeoutError after `within` seconds (the state polled
    lives in other processes or a database: there is no event to wait on)."""
    deadline = time.monotonic() + within
    while True:
        if condition():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {within:g} s")
        await asyncio.sleep(every)
