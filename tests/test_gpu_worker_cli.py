"""`headshot-bot gpu-worker` and `headshot-bot gpu-worker-role` as an operator runs them: real
processes, their exit codes and what they print. The fleet with the bot is tests/test_gpu_fleet.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pytest
from PIL import Image

from backends.params import GenerationParams
from bot.config import Settings
from storage.database import Database
from storage.gpu_queue import GenerationResult, GpuQueue, QueuedGeneration, QueueState
from storage.gpu_workers import WorkerRecord, WorkerRegistry
from storage.imagestore import DiskImageStore
from tests.conftest import EXAMPLE_SELFIE, ROOT, make_image
from tests.test_cli import headshot_bot, one_line
from tests.tiny_models.faces import DELAY_ENV

T = TypeVar("T")
SMALL = {"width": 64, "height": 96}

# A PostgreSQL URL nothing listens on: the checks before the worker connects must not need one.
NOWHERE = "postgresql+psycopg://worker:secret-password@127.0.0.1:9/headshot"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("diffusers")
    from tests.tiny_models import sd15

    root = tmp_path_factory.mktemp("models")
    sd15.build(root)
    return root


def tiny(models_dir: Path, **more: str) -> dict[str, str]:
    """A worker's settings with the tests' tiny models on the CPU."""
    return {
        "LOCAL_MODELS_DIR": str(models_dir),
        "LOCAL_DEVICE": "cpu",
        "LOCAL_COMPILE": "0",
        "LOCAL_OPERATIONS": "headshot,facegen",
        "LOCAL_FACE_ANALYSER": "tests.tiny_models.faces:StandInFaces",
        "PYTHONPATH": str(ROOT),  # where the stand-in face analyser is
        **more,
    }


@pytest.mark.parametrize("database", [None, "sqlite+aiosqlite:///{tmp}/headshot.db"])
def test_a_worker_on_sqlite_is_one_line_naming_database_url(
    tmp_path: Path, database: str | None
) -> None:
    env = {"IMAGE_STORE_SHARED": "1"}
    if database:
        env["DATABASE_URL"] = database.format(tmp=tmp_path)
    line = one_line(headshot_bot("gpu-worker", cwd=tmp_path, env=env))
    assert line == (
        "headshot-bot: invalid setting DATABASE_URL: a GPU worker takes its jobs from the "
        "cluster's PostgreSQL (postgresql+psycopg://…)"
    )


def test_a_worker_on_a_disk_store_not_declared_shared_is_one_line(tmp_path: Path) -> None:
    line = one_line(headshot_bot("gpu-worker", cwd=tmp_path, env={"DATABASE_URL": NOWHERE}))
    assert line.startswith("headshot-bot: invalid setting S3_BUCKET: "), line
    assert "IMAGE_STORE_SHARED=1" in line


def test_a_worker_without_its_models_is_one_line_naming_the_folder(
    tmp_path: Path, models_dir: Path
) -> None:
    empty = tmp_path / "no-models"
    empty.mkdir()
    env = tiny(empty, DATABASE_URL=NOWHERE, IMAGE_STORE_SHARED="1")
    line = one_line(headshot_bot("gpu-worker", cwd=tmp_path, env=env))
    assert line.startswith("headshot-bot: invalid setting LOCAL_MODELS_DIR: "), line
    assert str(empty) in line
    assert "secret-password" not in line


def test_a_face_analyser_that_cannot_be_imported_is_one_line_naming_it(
    tmp_path: Path, models_dir: Path
) -> None:
    env = tiny(models_dir, DATABASE_URL=NOWHERE, IMAGE_STORE_SHARED="1", PYTHONPATH="")
    line = one_line(headshot_bot("gpu-worker", cwd=tmp_path, env=env))
    assert line == (
        "headshot-bot: invalid setting LOCAL_FACE_ANALYSER: no module named tests.tiny_models.faces"
    )


def test_a_worker_whose_database_is_unreachable_is_one_line_without_its_password(
    tmp_path: Path, models_dir: Path
) -> None:
    # The models load first (a worker is ready only when warm), then it registers: refused.
    env = tiny(models_dir, DATABASE_URL=NOWHERE, IMAGE_STORE_SHARED="1")
    result = headshot_bot("gpu-worker", cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.splitlines()[-1]
    assert line.startswith("headshot-bot: invalid setting DATABASE_URL: this GPU worker cannot "), (
        line
    )
    assert "secret-password" not in result.stderr
    assert "ready" not in result.stderr


@pytest.mark.parametrize("name", ["Gpu", "pg_worker", "1worker", "gpu-worker", "x" * 64])
def test_a_role_name_postgresql_would_not_take_as_it_is_is_one_line(
    tmp_path: Path, name: str
) -> None:
    result = headshot_bot("gpu-worker-role", name, cwd=tmp_path, env={"DATABASE_URL": NOWHERE})
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert "is not a role name" in line and line.endswith("--help)"), line


def test_the_role_needs_postgresql(tmp_path: Path) -> None:
    line = one_line(headshot_bot("gpu-worker-role", "gpu_worker", cwd=tmp_path))
    assert line.startswith("headshot-bot: invalid setting DATABASE_URL: GPU workers use "), line


@pytest.mark.parametrize("name", ["worker", "postgres"])
def test_the_role_is_never_the_bots_own_login_or_the_superuser(tmp_path: Path, name: str) -> None:
    result = headshot_bot("gpu-worker-role", name, cwd=tmp_path, env={"DATABASE_URL": NOWHERE})
    line = one_line(result)
    assert line == (
        f"headshot-bot: {name} is not a role for GPU workers: name another, e.g. gpu_worker"
    )


# ---- one worker on a real PostgreSQL --------------------------------------------------------

HEARTBEAT_SECONDS = 0.3
WORKER_TIMEOUT_SECONDS = 2.0
# Each face analysis sleeps this long: a job lasts long enough to stop the worker during it.
FACE_DELAY = 1.5


async def eventually(check: Callable[[], Awaitable[T | None]], what: str, within: float = 120) -> T:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = await check()
        if found is not None and found is not False:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def make_role(owner_url: str, cwd: Path) -> str:
    """`headshot-bot gpu-worker-role` as the operator runs it: the URL to give the workers."""
    name = f"gpu_worker_{secrets.token_hex(4)}"
    result = headshot_bot("gpu-worker-role", name, cwd=cwd, env={"DATABASE_URL": owner_url})
    assert result.returncode == 0, result.stderr
    (url,) = result.stdout.splitlines()
    (line,) = result.stderr.splitlines()
    assert "keep it secret" in line and urlsplit(url).password not in line
    assert urlsplit(url).username == name
    return url


async def worker_records(registry: WorkerRegistry) -> list[WorkerRecord]:
    return await registry.workers(timeout=WORKER_TIMEOUT_SECONDS)


@dataclass
class OneWorker:
    """A `python -m bot gpu-worker` process on a migrated database, connecting as the role
    `gpu-worker-role` made, and what a test looks at it through (as the owner)."""

    process: asyncio.subprocess.Process
    log_path: Path
    worker_url: str
    registry: WorkerRegistry
    queue: GpuQueue
    store: DiskImageStore

    def logged(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def registered(self) -> list[WorkerRecord] | None:
        assert self.process.returncode is None, self.logged()
        return await worker_records(self.registry) or None

    async def send(self, track: str, key: str, **options: Any) -> int:
        params = GenerationParams.create(
            "headshot", prompt="a studio headshot", seed=7, **SMALL, **options
        )
        return await self.queue.send(QueuedGeneration(track, params.to_dict(), key, None))

    async def draining(self) -> WorkerRecord | None:
        (now,) = await worker_records(self.registry)
        return now if now.draining else None


@contextlib.asynccontextmanager
async def one_worker(
    owner_url: str, models_dir: Path, tmp_path: Path, *, face_delay: float
) -> AsyncIterator[OneWorker]:
    worker_url = make_role(owner_url, tmp_path)
    clean = {k: v for k, v in os.environ.items() if k.lower() not in Settings.model_fields}
    env = {
        **clean,
        **tiny(models_dir, LOCAL_FACE_ANALYSER="tests.tiny_models.faces:SlowStandInFaces"),
        DELAY_ENV: str(face_delay),
        "DATABASE_URL": worker_url,
        "DATA_DIR": str(tmp_path / "data"),
        "IMAGE_STORE_SHARED": "1",
        "GPU_WORKER_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        "GPU_WORKER_TIMEOUT_SECONDS": str(WORKER_TIMEOUT_SECONDS),
        "MODELSLAB_API_KEY": "sk-never-needed-here",
        "OMP_NUM_THREADS": "1",
    }
    log_path = tmp_path / "worker.log"
    db = Database(owner_url)
    queue = GpuQueue(owner_url, worker_timeout=WORKER_TIMEOUT_SECONDS)
    await queue.open()
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "gpu-worker", env=env, stdout=log, stderr=log
        )
    try:
        yield OneWorker(
            process,
            log_path,
            worker_url,
            WorkerRegistry(db),
            queue,
            DiskImageStore(tmp_path / "data" / "images"),
        )
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        await queue.aclose()
        await db.dispose()


async def test_a_worker_warms_up_registers_makes_jobs_heartbeats_and_drains_on_sigterm(
    postgres_url: str, models_dir: Path, tmp_path: Path
) -> None:
    async with one_worker(postgres_url, models_dir, tmp_path, face_delay=FACE_DELAY) as worker:
        store = worker.store
        face_key = await store.put(EXAMPLE_SELFIE.read_bytes(), content_type="image/jpeg")
        faceless_key = await store.put(make_image(color="black"), content_type="image/png")

        # Registered only once warm: by the time its row is there, the warm-up is logged.
        (record,) = await eventually(worker.registered, "the worker registered", within=300)
        assert "pipelines loaded and warmed up" in worker.logged()
        assert (record.host, record.device) == (socket.gethostname(), "cpu")
        assert (record.operations, record.capacity) == (("headshot", "facegen"), 1)
        assert not record.draining and record.live
        ready = "gpu-worker ready: headshot, facegen on cpu, capacity 1"
        await eventually(lambda: _true(ready in worker.logged()), "the ready line")

        async def made(track: str, key: str, **options: Any) -> GenerationResult:
            queue_id = await worker.send(track, key, **options)
            return await eventually(lambda: worker.queue.result(queue_id), f"{track}'s result")

        done = await made("job-ok", face_key, samples=2)
        assert done.ok and not done.refused and done.seconds and done.seconds > 0
        assert len(done.images) == 2
        for image in done.images:
            data = await store.get(image.key)
            with Image.open(io.BytesIO(data)) as png:
                assert png.format == "PNG" and png.size == (image.width, image.height)
            assert (image.width, image.height) == (SMALL["width"], SMALL["height"])
            assert (image.content_type, image.size_bytes) == ("image/png", len(data))

        refused = await made("job-faceless", faceless_key)
        assert not refused.ok and refused.refused and refused.reason
        assert "face" in refused.reason.lower()
        missing = await made("job-missing", "0" * 64 + ".jpg")
        assert (missing.ok, missing.refused) == (False, False)
        assert missing.reason == "the selfie for this job is missing"

        # Its figures come with its heartbeats, which keep coming.
        async def counted() -> WorkerRecord | None:
            (now,) = await worker_records(worker.registry)
            return now if (now.jobs_done, now.jobs_failed) == (1, 1) else None

        figures = await eventually(counted, "the figures in a heartbeat")
        assert figures.seconds_per_image and 0 < figures.seconds_per_image < done.seconds
        later = await eventually(
            lambda: _newer(worker.registry, figures.heartbeat_at), "a later heartbeat", within=10
        )
        assert later.heartbeat_age < WORKER_TIMEOUT_SECONDS

        # SIGTERM mid-job: draining is written first, the job still finishes, a job sent after
        # is not taken, and the worker exits 0, its row left draining with its last figures.
        last = await worker.send("job-last", face_key)
        await eventually(lambda: _running(worker.queue, last), "the last job running", within=60)
        worker.process.send_signal(signal.SIGTERM)
        seen = await eventually(worker.draining, "the draining heartbeat", within=10)
        assert not seen.live
        assert await worker.queue.result(last) is None, "draining is written before the job ends"
        after = await worker.send("job-after", face_key)
        assert await asyncio.wait_for(worker.process.wait(), 60) == 0, worker.logged()
        finished = await worker.queue.result(last)
        assert finished is not None and finished.ok, worker.logged()
        (left,) = await worker_records(worker.registry)
        assert left.draining and not left.live and left.jobs_done == figures.jobs_done + 1
        assert (await worker.queue.status(after)).state == QueueState.WAITING
        log = worker.logged()
        assert "Traceback" not in log
        for secret in ("a studio headshot", urlsplit(worker.worker_url).password, "sk-never-"):
            assert secret not in log


async def test_a_second_signal_stops_a_draining_worker_at_once(
    postgres_url: str, models_dir: Path, tmp_path: Path
) -> None:
    async with one_worker(postgres_url, models_dir, tmp_path, face_delay=60) as worker:
        face_key = await worker.store.put(EXAMPLE_SELFIE.read_bytes(), content_type="image/jpeg")
        await eventually(worker.registered, "the worker registered", within=300)
        queue_id = await worker.send("job-slow", face_key)
        await eventually(lambda: _running(worker.queue, queue_id), "the job running", within=60)
        worker.process.send_signal(signal.SIGTERM)
        await eventually(worker.draining, "the draining heartbeat", within=10)
        worker.process.send_signal(signal.SIGTERM)
        # Within seconds, not the minute the job would take; its job is left to the replicas
        # (stalled once the worker's heartbeat is older than the timeout).
        assert await asyncio.wait_for(worker.process.wait(), 10) == 128 + signal.SIGTERM
        assert await worker.queue.result(queue_id) is None
        assert "gpu-worker stopped at once" in worker.logged()


async def _true(value: bool) -> bool | None:
    return True if value else None


async def _running(queue: GpuQueue, queue_id: int) -> bool | None:
    return True if (await queue.status(queue_id)).state == QueueState.RUNNING else None


async def _newer(registry: WorkerRegistry, than: datetime) -> WorkerRecord | None:
    (now,) = await worker_records(registry)
    return now if now.heartbeat_at > than else None
