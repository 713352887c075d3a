"""The GPU fleet as an operator runs it, for tests/test_gpu_fleet.py and bench/gpu_fleet.py.

One PostgreSQL database, migrated, with the workers' own database role (`grant_worker_role`);
real `headshot-bot gpu-worker` processes (`python -m bot gpu-worker`) on the CPU with the tests'
tiny models, connecting as that role; one shared image folder (DATA_DIR + IMAGE_STORE_SHARED=1)
or an S3 bucket; and the bot: an in-process HeadshotApp on the same database with BACKEND=local,
which is the fleet's FleetBackend on PostgreSQL.

A worker here gets no chat token and no ModelsLab key: only the database role's URL, the
LOCAL_* settings, the image store's and the fleet's timings (heartbeat 0.3 s, dead after 2 s, so
that a killed worker drops out of the count within a test). In a fleet with `slow_faces`, each
worker's face analyser (tests.tiny_models.faces:SlowStandInFaces) sleeps `Fleet.set_face_delay`
seconds per job (changed while the workers run) and leaves its process id in `Fleet.marks`, so
that a test can catch a job on its worker and knows which worker took it.

Nothing here is bound to an event loop: the worker processes are plain `subprocess` children and
each registry read opens its own connection, so that the workers of one pytest module outlive
each test's loop (starting one costs half a minute of imports on a small machine).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.database import Database
from storage.gpu_access import grant_worker_role, worker_url
from storage.gpu_workers import WorkerRecord, WorkerRegistry
from tests.tiny_models.faces import DELAY_ENV, MARKS_ENV

HEARTBEAT_SECONDS = 0.3
# Far above a heartbeat's delays on a busy 2-core machine: only a killed worker goes silent.
WORKER_TIMEOUT_SECONDS = 4.0
STAND_IN = "tests.tiny_models.faces:StandInFaces"
SLOW_STAND_IN = "tests.tiny_models.faces:SlowStandInFaces"
# What a worker's environment never carries over from ours: it needs no chat token, no key.
SECRET_PREFIXES = ("TELEGRAM_", "DISCORD_", "MODELSLAB_", "TEST_POSTGRES", "PSEUDONYM_", "OWNER_")


@dataclass(frozen=True)
class FleetDatabase:
    """The bot's URL (the database's owner) and the workers' (their own narrow role)."""

    owner_url: str
    worker_url: str


async def fleet_database(owner_url: str) -> FleetDatabase:
    """Give a migrated database a worker role of its own (roles are server-wide: one per
    database, so that tests never share one)."""
    role = f"gpu_worker_{secrets.token_hex(4)}"
    password = secrets.token_hex(12)
    await grant_worker_role(owner_url, role, password)
    return FleetDatabase(owner_url, worker_url(owner_url, role, password))


def worker_environment(
    database: FleetDatabase,
    *,
    data_dir: Path,
    models_dir: Path,
    operations: Sequence[str],
    capacity: int = 1,
    face_delay: float | Path = 0.0,
    marks: Path | None = None,
    store: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """A gpu-worker's whole environment: ours without any secret, plus its settings."""
    inherited = {
        name: value for name, value in os.environ.items() if not name.startswith(SECRET_PREFIXES)
    }
    env = {
        **inherited,
        "DATABASE_URL": database.worker_url,
        "DATA_DIR": str(data_dir),
        "IMAGE_STORE_SHARED": "1",
        "LOCAL_DEVICE": "cpu",
        "LOCAL_COMPILE": "0",
        "LOCAL_OPERATIONS": ",".join(operations),
        "LOCAL_MODELS_DIR": str(models_dir),
        "LOCAL_FACE_ANALYSER": SLOW_STAND_IN if face_delay or marks else STAND_IN,
        "GPU_WORKER_CAPACITY": str(capacity),
        "GPU_WORKER_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        "GPU_WORKER_TIMEOUT_SECONDS": str(WORKER_TIMEOUT_SECONDS),
        "LOG_LEVEL": "INFO",
        # Tiny models gain nothing from threads; on a small shared machine OpenMP's spinning
        # threads make every worker slower.
        "OMP_NUM_THREADS": "1",
        DELAY_ENV: str(face_delay),
        **(store or {}),
    }
    if marks is not None:
        env[MARKS_ENV] = str(marks)
    return env


@dataclass
class GpuWorkerProcess:
    """One `python -m bot gpu-worker` child process and its log."""

    name: str
    operations: tuple[str, ...]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    worker_id: str | None = None  # its registry row, once it is known

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bot", "gpu-worker"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def logs(self, tail: int = 4000) -> str:
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-tail:]

    def check_running(self) -> None:
        if not self.running:
            raise AssertionError(
                f"{self.name} exited ({self.returncode}); its log ends:\n{self.logs()}"
            )

    async def kill(self) -> None:
        """SIGKILL: no clean-up at all, as in a crash, an OOM kill or a pulled plug."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self._exited(10.0)

    async def terminate(self, within: float = 60.0) -> int:
        """SIGTERM, then wait for it to exit: its exit status (SIGKILL after `within`: -9)."""
        assert self.process is not None
        if self.running:
            self.process.send_signal(signal.SIGTERM)
            if not await self._exited(within):
                self.process.kill()
        return self.process.wait()

    async def _exited(self, within: float) -> bool:
        deadline = time.monotonic() + within
        while self.running:
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.02)
        return True


@dataclass
class Fleet:
    """The workers of one database, their shared folders, and a view of their registry."""

    database: FleetDatabase
    workdir: Path
    models_dir: Path
    store: Mapping[str, str] = field(default_factory=dict)
    slow_faces: bool = False
    members: list[GpuWorkerProcess] = field(default_factory=list)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def marks(self) -> Path:
        """Where SlowStandInFaces leaves the process id of each worker that analyses a face."""
        return self.workdir / "face-marks"

    @property
    def face_delay_file(self) -> Path:
        return self.workdir / "face-delay"

    def set_face_delay(self, seconds: float) -> None:
        """How long each worker's face analysis sleeps from now on (a fleet with slow_faces)."""
        self.face_delay_file.write_text(str(seconds))

    def worker(
        self, operations: Sequence[str], *, capacity: int = 1, name: str | None = None
    ) -> GpuWorkerProcess:
        """A worker of this fleet, not started yet."""
        name = name or f"gpu-worker-{len(self.members)}"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.slow_faces:
            self.marks.mkdir(parents=True, exist_ok=True)
            if not self.face_delay_file.exists():
                self.set_face_delay(0.0)
        env = worker_environment(
            self.database,
            data_dir=self.data_dir,
            models_dir=self.models_dir,
            operations=operations,
            capacity=capacity,
            face_delay=self.face_delay_file if self.slow_faces else 0.0,
            marks=self.marks if self.slow_faces else None,
            store=self.store,
        )
        member = GpuWorkerProcess(name, tuple(operations), env, self.workdir / f"{name}.log")
        self.members.append(member)
        return member

    async def workers(self) -> list[WorkerRecord]:
        """Every row of the registry (newest first), dead ones included."""
        return await self._registry_read(live=False)

    async def live(self) -> list[WorkerRecord]:
        return await self._registry_read(live=True)

    async def _registry_read(self, *, live: bool) -> list[WorkerRecord]:
        db = Database(self.database.owner_url)
        try:
            registry = WorkerRegistry(db)
            read = registry.live if live else registry.workers
            return await read(timeout=WORKER_TIMEOUT_SECONDS)
        finally:
            await db.dispose()

    async def start(self, *workers: GpuWorkerProcess, within: float = 240.0) -> None:
        """Start the workers at once, and wait until each has registered (which it does once its
        pipelines are loaded and warmed up); each learns its registry id."""
        known = {record.id for record in await self.workers()}
        for worker in workers:
            worker.start()
        deadline = time.monotonic() + within
        while True:
            for worker in workers:
                worker.check_running()
            new = [record for record in await self.live() if record.id not in known]
            if len(new) >= len(workers):
                break
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(new)} of {len(workers)} workers registered within {within:g} s:\n"
                    + self.logs()
                )
            await asyncio.sleep(0.1)
        self._attribute(workers, new)
        for worker in workers:  # a warm-up's face analysis is no job taken
            (self.marks / str(worker.pid)).unlink(missing_ok=True)

    def _attribute(self, workers: Sequence[GpuWorkerProcess], records: list[WorkerRecord]) -> None:
        """Which registry row is which process: the row whose id the worker's log names, or the
        only new row with its operations."""
        for worker in workers:
            log = worker.logs(tail=1_000_000)
            named = [record for record in records if record.id in log]
            same = [r for r in records if sorted(r.operations) == sorted(worker.operations)]
            found = named or same
            if len(found) == 1:
                worker.worker_id = found[0].id

    def takers(self) -> list[int]:
        """Process ids of the workers that began a face analysis since `forget_takers`."""
        return sorted(int(path.name) for path in self.marks.iterdir())

    def forget_takers(self) -> None:
        for path in self.marks.iterdir():
            path.unlink(missing_ok=True)

    def by_pid(self, pid: int) -> GpuWorkerProcess:
        return next(worker for worker in self.members if worker.running and worker.pid == pid)

    async def wait_for_taker(self, within: float = 60.0, besides: Sequence[int] = ()) -> int:
        """The process id of the first worker (other than `besides`) to analyse a face."""
        deadline = time.monotonic() + within
        while True:
            found = [pid for pid in self.takers() if pid not in besides]
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise AssertionError(f"no worker took the job within {within:g} s\n{self.logs()}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """SIGTERM every worker still running, at once."""
        await asyncio.gather(*(w.terminate() for w in self.members if w.running))

    def logs(self) -> str:
        return "\n".join(f"--- {worker.name} ---\n{worker.logs()}" for worker in self.members)


async def wait_for(condition: Any, within: float, every: float = 0.05) -> Any:
    """Poll an async `condition` until it gives something true, and return that; TimeoutError
    after `within` seconds (what it polls lives in other processes or the database)."""
    deadline = time.monotonic() + within
    while True:
        value = await condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not reached within {within:g} s (last: {value!r})")
        await asyncio.sleep(every)


def bot_settings(fleet: Fleet, **more: Any) -> dict[str, Any]:
    """load_settings' arguments for a replica of the bot on the fleet's database and store."""
    with contextlib.suppress(FileExistsError):
        fleet.data_dir.mkdir(parents=True)
    return {
        "database_url": fleet.database.owner_url,
        "data_dir": fleet.data_dir,
        "image_store_shared": True,
        "backend": "local",
        "local_models_dir": fleet.models_dir,
        "local_device": "cpu",
        "local_compile": False,
        "local_face_analyser": STAND_IN,
        "gpu_worker_heartbeat_seconds": HEARTBEAT_SECONDS,
        "gpu_worker_timeout_seconds": WORKER_TIMEOUT_SECONDS,
        "web_port": 0,
        "selfie_retention_seconds": 0,
        "max_active_per_user": 100,
        "daily_quota": 1000,
        # The fleet's selfies are generated pictures with no face in them.
        "face_check": False,
        "identity_gate": False,
        **more,
    }
