"""A real Prometheus (Debian's `prometheus`, as .ci/run installs it) scrapes the running service
while it works, and every query of the Grafana dashboard (deploy/grafana/headshot-bot.json) is
evaluated through Prometheus' HTTP API and returns data.

The service is the whole bot: the real discord.py against the fake Discord, the ModelsLab
client against the simulator over HTTP, the identity gate on (one output is a stranger, made
again), one job the generator fails. /metrics wants a bearer token (METRICS_TOKEN), which
Prometheus reads from a file, as deploy/prometheus/prometheus.yml says to. On PostgreSQL the bot
runs the GPU fleet (BACKEND=local, ModelsLab for what no worker serves) with two workers in the
registry, so that the per-worker panels have their series; on SQLite there is no fleet, and
those panels' queries must come back empty (and only those).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import yaml

from backends.modelslab.simulator import Simulator
from storage.gpu_workers import WorkerRegistry
from tests.cluster import free_port
from tests.conftest import EXAMPLE_SELFIE
from tests.fake_discord import Interaction
from tests.test_dashboard import load, metric_names, queries
from tests.test_discord import GUILD, World, result_of
from tests.test_identity_gate import stranger

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = Path("/usr/bin/prometheus")
DEPLOY_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
TOKEN = "scrape-token-5d2f8c1e"
# What Grafana puts in place of its variables: a rate window of several scrapes (Prometheus
# scrapes every second here), the dashboard's range, every replica.
GRAFANA_VARIABLES = {
    "$__rate_interval": "1m",
    "$__range": "5m",
    "$__interval": "15s",
    "$instance": ".*",
}
# Series a bot has only when it has GPU workers.
PER_WORKER = frozenset(
    {
        "headshot_gpu_worker_seconds_per_image",
        "headshot_gpu_worker_heartbeat_age_seconds",
        "headshot_gpu_worker_jobs",
    }
)
# The queries of the dashboard that read them: without a GPU worker, they alone have no data.
PER_WORKER_QUERIES = frozenset(
    {
        "Seconds per image, by worker / A",
        "Heartbeat age, by worker / A",
        "Jobs per worker since it started / A",
    }
)
PEOPLE = (4301, 4302, 4303)


def as_promql(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


class Prometheus:
    """`/usr/bin/prometheus` on a loopback port, scraping one target every second."""

    def __init__(self, folder: Path, target: str, token_file: Path) -> None:
        self.folder = folder
        folder.mkdir()
        self.url = f"http://127.0.0.1:{free_port()}"
        # The deployment's own scrape job, pointed at this service, with its authorization
        # uncommented as the file's comment says.
        deployed = yaml.safe_load(DEPLOY_CONFIG.read_text())
        job = dict(deployed["scrape_configs"][0])
        job.update(
            scrape_interval="1s",
            scrape_timeout="1s",
            static_configs=[{"targets": [target]}],
            authorization={"type": "Bearer", "credentials_file": str(token_file)},
        )
        self.config = folder / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump({"global": deployed["global"], "scrape_configs": [job]})
        )
        self.log = folder / "prometheus.log"
        self.process: asyncio.subprocess.Process | None = None
        self.session = aiohttp.ClientSession()

    async def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                str(PROMETHEUS),
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address={self.url.removeprefix('http://')}",
                stdout=log,
                stderr=log,
            )
        await self.until(self.ready, "Prometheus to be ready")

    async def stop(self) -> None:
        await self.session.close()
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    async def until(self, check: Any, what: str, timeout: float = 20) -> None:  # noqa: ASYNC109
        deadline = time.monotonic() + timeout
        while not await check():
            assert self.process is not None and self.process.returncode is None, self.log_tail()
            assert time.monotonic() < deadline, f"waited for {what}\n{self.log_tail()}"
            await asyncio.sleep(0.2)

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    async def ready(self) -> bool:
        try:
            async with self.session.get(f"{self.url}/-/ready") as answer:
                return answer.status == 200
        except aiohttp.ClientConnectionError:
            return False

    async def api(self, path: str, **params: str) -> Any:
        async with self.session.get(f"{self.url}/api/v1/{path}", params=params) as answer:
            body = await answer.json()
            assert answer.status == 200 and body["status"] == "success", (path, params, body)
            return body["data"]

    async def query(self, expr: str) -> list[dict[str, Any]]:
        data = await self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    async def scalar(self, expr: str) -> float | None:
        result = await self.query(expr)
        return float(result[0]["value"][1]) if result else None

    async def scrapes(self) -> int:
        """Scrapes of the service so far that went well."""
        return int(await self.scalar("sum_over_time(up[10m])") or 0)

    async def scraped_again(self, times: int) -> None:
        """Until `times` more scrapes went well."""
        start = await self.scrapes()

        async def done() -> bool:
            return await self.scrapes() >= start + times

        await self.until(done, f"{times} scrapes")


def installed() -> bool:
    return PROMETHEUS.is_file()


Launch = Callable[[str, Path], Awaitable[Prometheus]]


@pytest.fixture
async def launch_prometheus(tmp_path: Path) -> AsyncIterator[Launch]:
    """Start Prometheus scraping a target (host:port) with the token in a file; stopped after."""
    # Not skipped when missing: .ci/run installs it.
    assert installed(), "install Debian's prometheus (apt-get install prometheus)"
    started: list[Prometheus] = []

    async def launch(target: str, token_file: Path) -> Prometheus:
        scraper = Prometheus(tmp_path / f"prometheus-{len(started)}", target, token_file)
        started.append(scraper)
        await scraper.start()
        return scraper

    yield launch
    for scraper in started:
        await scraper.stop()


async def headshot(discord_world: World, user_id: int) -> Interaction:
    """/headshot with the astronaut's selfie: a face the identity gate can measure."""
    selfie = discord_world.fake.upload(EXAMPLE_SELFIE.read_bytes(), "me.jpg", "image/jpeg")
    return await discord_world.fake.run_command(
        "headshot", {"selfie": selfie}, user_id=user_id, guild_id=GUILD
    )


async def test_prometheus_scrapes_the_service_and_every_dashboard_query_returns_data(
    discord_world: World,
    simulator: Simulator,
    launch_prometheus: Launch,
    database_kind: str,
    tmp_path: Path,
) -> None:
    fleet = database_kind == "postgresql"
    settings: dict[str, Any] = {"identity_gate": True, "metrics_token": TOKEN}
    if fleet:
        settings.update(backend="local", fallback_backend="modelslab")
    await discord_world.start(**settings)
    app = discord_world.app
    assert app is not None
    target = urlsplit(app.base_url).netloc
    token_file = tmp_path / "metrics-token"
    token_file.write_text(TOKEN)
    scraper = await launch_prometheus(target, token_file)

    # Scraped before anything happens, so that every rate has a before and an after.
    async def up() -> bool:
        targets = (await scraper.api("targets"))["activeTargets"]
        return [t["health"] for t in targets] == ["up"] and await scraper.scalar("up") == 1

    await scraper.until(up, "the service's target to be up")
    await scraper.scraped_again(1)

    # Two jobs through the identity gate (the second one's first image is a stranger, made
    # again), then one the generator fails.
    simulator.config.stranger_image = stranger()
    simulator.config.stranger_rate = 0.5
    for person in PEOPLE[:2]:
        await result_of(discord_world.fake, await headshot(discord_world, person))
    simulator.config.failure_rate = 1.0
    failing = await headshot(discord_world, PEOPLE[2])
    await discord_world.fake.wait_for(
        lambda: (
            failing.original is not None
            and failing.original.content.startswith("Sorry, that didn't work:")
        ),
        timeout=30,
    )
    await discord_world.no_deliveries_owed()
    await app.engine.wait_idle()
    if fleet:
        # Two GPU workers report through the registry (they serve no operation asked here).
        registry = WorkerRegistry(app.db)
        for host, draining in (("gpu-box-1", False), ("gpu-box-2", True)):
            worker = await registry.register(
                host=host, device="cuda:0", operations=("avatar",), capacity=1
            )
            await registry.heartbeat(
                worker, jobs_done=7, jobs_failed=1, seconds_per_image=4.5, draining=draining
            )

    # Until Prometheus holds the three ended jobs, then two more scrapes.
    async def ended() -> bool:
        return await scraper.scalar("sum(headshot_jobs_total)") == 3

    await scraper.until(ended, "the three ended jobs to be scraped")
    await scraper.scraped_again(2)

    # The dashboard's replica picker lists this service.
    replicas = await scraper.api("label/instance/values", **{"match[]": "headshot_queue_depth"})
    assert replicas == [target]

    found = queries(load())
    empty: list[str] = []
    for where, expr in found:
        result = await scraper.query(as_promql(expr))
        if not fleet and metric_names(expr) & PER_WORKER:
            # No GPU worker on one machine with ModelsLab: no series, and an empty panel.
            assert result == [], (where, result)
            empty.append(where)
            continue
        assert result, f"{where}: no data for {expr}"
        values = [float(series["value"][1]) for series in result]
        assert any(math.isfinite(v) for v in values), f"{where}: only {values} for {expr}"
    assert set(empty) == (set() if fleet else PER_WORKER_QUERIES)

    # A few figures the panels show, as Prometheus has them.
    checks = "sum by (result) (headshot_identity_checks_total)"
    by_result = {s["metric"]["result"]: float(s["value"][1]) for s in await scraper.query(checks)}
    assert by_result == {"passed": 2.0, "failed": 1.0, "unjudged": 0.0}
    assert await scraper.scalar("headshot_identity_retries_total") == 1
    assert await scraper.scalar('headshot_jobs_total{outcome="failed"} > 0') == 1
    workers = "sum by (state) (headshot_gpu_workers)"
    by_state = {s["metric"]["state"]: float(s["value"][1]) for s in await scraper.query(workers)}
    expected = {"live": 1.0, "draining": 1.0} if fleet else {"live": 0.0, "draining": 0.0}
    assert by_state == {**expected, "silent": 0.0}
