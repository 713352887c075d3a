"""The local backend inside the whole service: the GPU worker process on the CPU with tiny
random-weight models, the dispatcher in front of it, and FALLBACK_BACKEND both ways.

The job goes the same way as a ModelsLab one: queued, submitted to the worker, woken when the
worker finishes (as a webhook would), re-hosted, credits committed; a failure is refunded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("diffusers")

from PIL import Image

from backends.fallback import FallbackBackend
from backends.local.backend import LocalBackend
from backends.modelslab.simulator import Simulator
from bot.app import HeadshotApp
from bot.generation import GenerationRequest
from bot.jobs.events import Completed, Failed, JobEvent
from storage.records import JobRecord, JobState
from tests.conftest import EXAMPLE_SELFIE, FAST, AppFactory, make_image
from tests.test_commands import count_rows
from tests.tiny_models import sd15

STAND_IN = "tests.tiny_models.faces:StandInFaces"
SMALL = {"width": 64, "height": 96}


@pytest.fixture
def database_kind() -> str:
    """The bot's own child worker is the single machine's (SQLite): on PostgreSQL, BACKEND=local
    is the fleet of gpu-workers (tests/test_gpu_fleet.py)."""
    return "sqlite"


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    sd15.build(root)
    return root


# The worker generates on this machine's CPU, slowly when it is busy: a job's time limit here
# is far above any run's, so that only what is tested can fail a job.
LOCAL_TIMINGS = dataclasses.replace(FAST, job_timeout_seconds=600)


def local_app(models_dir: Path, **more: Any) -> dict[str, Any]:
    """make_app's arguments for a service on the local backend (tiny models, the CPU)."""
    return {
        "timings": LOCAL_TIMINGS,
        "backend": "local",
        "local_models_dir": models_dir,
        "local_device": "cpu",
        "local_compile": False,
        "local_operations": "headshot,facegen",
        "local_face_analyser": STAND_IN,
        **more,
    }


async def request(
    app: HeadshotApp, operation: str = "headshot", selfie: bytes | None = None, **options: Any
) -> str:
    job = await app.generation.request(
        GenerationRequest(
            platform="test",
            platform_user_id="alice",
            operation=operation,
            options={"prompt": "a studio headshot", **options},
            selfie=selfie if selfie is not None else EXAMPLE_SELFIE.read_bytes(),
        )
    )
    return job.id


async def outcome(app: HeadshotApp, job_id: str) -> JobEvent:
    async for event in app.events.watch(job_id):
        if isinstance(event, Completed | Failed):
            return event
    raise AssertionError("the event stream ended without an outcome")


async def generate(
    app: HeadshotApp, operation: str = "headshot", selfie: bytes | None = None, **options: Any
) -> JobEvent:
    return await outcome(app, await request(app, operation, selfie, **options))


async def state_reached(
    app: HeadshotApp, job_id: str, reached: Callable[[JobRecord], bool]
) -> JobRecord:
    for _ in range(1200):
        job = await app.jobs.get(job_id)
        if job is not None and reached(job):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} never got there: {job}")


async def stored_sizes(app: HeadshotApp, event: Completed) -> list[tuple[int, int]]:
    sizes = []
    for image in event.images:
        data = await app.store.get(image.content_key)
        sizes.append(Image.open(io.BytesIO(data)).size)
    return sizes


async def test_a_headshot_is_made_on_the_local_worker_and_rehosted(
    make_app: AppFactory, models_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = await make_app(**local_app(models_dir, local_capacity=3))
    assert isinstance(app.backend, LocalBackend)
    # The operator is told at start that images made here are not checked for nudity.
    assert "the local GPU backend has no NSFW image checker" in caplog.text
    assert app.engine.dispatcher.capacity == 3

    event = await generate(app, samples=2, seed=11, **SMALL)

    assert isinstance(event, Completed), event
    assert len(event.images) == 2
    assert await stored_sizes(app, event) == [(64, 96), (64, 96)]
    assert await count_rows(app, "credit_ledger", "kind = 'commit'") == 1

    # The same seed makes the same pixels: the re-hosted file is the very same content.
    again = await generate(app, samples=1, seed=11, **SMALL)
    assert isinstance(again, Completed)
    assert again.images[0].content_key == event.images[0].content_key
    other = await generate(app, samples=1, seed=12, **SMALL)
    assert isinstance(other, Completed)
    assert other.images[0].content_key != event.images[0].content_key


async def test_a_selfie_without_a_face_fails_with_the_reason_and_is_refunded(
    make_app: AppFactory, models_dir: Path
) -> None:
    app = await make_app(**local_app(models_dir))
    event = await generate(app, selfie=make_image((128, 160), "black"), seed=1, **SMALL)
    assert isinstance(event, Failed)
    assert "no face found in the selfie" in event.reason
    assert event.refunded
    assert await count_rows(app, "credit_ledger", "kind = 'commit'") == 0


async def test_a_killed_worker_fails_its_job_and_the_next_job_restarts_it(
    make_app: AppFactory, models_dir: Path
) -> None:
    app = await make_app(**local_app(models_dir))
    backend = app.backend
    assert isinstance(backend, LocalBackend)
    process = backend._process
    assert process is not None and process.pid is not None

    job_id = await request(app, seed=3, width=512, height=768)  # long enough to be caught
    await state_reached(app, job_id, lambda job: job.state == JobState.PROCESSING)
    os.kill(process.pid, signal.SIGKILL)
    event = await outcome(app, job_id)
    assert isinstance(event, Failed)
    assert event.reason == "the generator could not make this image"
    assert event.refunded

    event = await generate(app, seed=3, **SMALL)
    assert isinstance(event, Completed), event
    assert backend._process is not None and backend._process.pid != process.pid


async def test_an_operation_the_gpu_does_not_serve_falls_back_to_modelslab_once(
    make_app: AppFactory, models_dir: Path, simulator: Simulator
) -> None:
    app = await make_app(**local_app(models_dir, fallback_backend="modelslab"))
    assert isinstance(app.backend, FallbackBackend)

    event = await generate(app, "flux_headshot", seed=5)

    assert isinstance(event, Completed), event
    submits = [path for path, _ in simulator.requests if "make_gen" in path]
    assert len(submits) == 1
    assert await count_rows(app, "credit_ledger", "kind = 'reserve'") == 1
    assert await count_rows(app, "credit_ledger", "kind = 'commit'") == 1

    # A request refused for its content is not sent again elsewhere: it would be refused there.
    event = await generate(app, selfie=make_image((128, 160), "black"), seed=1, **SMALL)
    assert isinstance(event, Failed) and "no face found" in event.reason
    assert (
        len([path for path, _ in simulator.requests if "make_gen" in path or "head_shot" in path])
        == 1
    )


async def test_a_refused_modelslab_account_falls_back_to_the_local_gpu(
    make_app: AppFactory, models_dir: Path, simulator: Simulator
) -> None:
    app = await make_app(
        **local_app(models_dir, backend="modelslab", fallback_backend="local"),
        modelslab_api_key="not-the-key",
    )
    event = await generate(app, seed=9, **SMALL)

    assert isinstance(event, Completed), event
    assert [status for _, status in simulator.requests] == [401]
    assert await stored_sizes(app, event) == [(64, 96)]
    assert await count_rows(app, "credit_ledger", "kind = 'reserve'") == 1
    assert await count_rows(app, "credit_ledger", "kind = 'commit'") == 1


async def test_a_generation_modelslab_reports_failed_is_made_again_locally(
    make_app: AppFactory, models_dir: Path, simulator: Simulator
) -> None:
    # ModelsLab takes the job, works on it, then reports it failed: the fallback makes it
    # locally, and the job's one reserved credit pays for the one image delivered.
    simulator.config.failure_rate = 1.0
    simulator.config.processing_seconds = 0.3
    app = await make_app(**local_app(models_dir, backend="modelslab", fallback_backend="local"))
    job_id = await request(app, seed=4, **SMALL)
    event = await outcome(app, job_id)

    assert isinstance(event, Completed), event
    assert any("fetch" in path for path, _ in simulator.requests)
    assert await stored_sizes(app, event) == [(64, 96)]
    assert await count_rows(app, "credit_ledger", "kind = 'reserve'") == 1
    assert await count_rows(app, "credit_ledger", "kind = 'commit'") == 1
    job = await app.jobs.get(job_id)
    assert job is not None and job.provider_id is not None
    assert job.provider_id.startswith("local:"), "the job records where it was made"


async def test_a_failure_reported_after_a_restart_is_still_handed_over(
    make_app: AppFactory, models_dir: Path, simulator: Simulator
) -> None:
    # ModelsLab takes the job; the service restarts (or another replica takes the job over)
    # before ModelsLab reports it failed. The request to hand over is rebuilt from the job's
    # row and its stored selfie, so the fallback still makes it locally.
    simulator.config.failure_rate = 1.0
    simulator.config.processing_seconds = 2.0
    settings = local_app(models_dir, backend="modelslab", fallback_backend="local")
    app = await make_app(**settings)
    job_id = await request(app, seed=5, **SMALL)
    await state_reached(app, job_id, lambda job: job.state == JobState.PROCESSING)
    await app.stop()

    again = await make_app(**settings)
    await again.engine.wait_idle()
    done = await again.jobs.get(job_id)
    assert done is not None and done.state == JobState.SUCCEEDED, done
    assert (done.provider_id or "").startswith("local:"), "made locally after the restart"
    assert len(simulator.jobs) == 1, "ModelsLab was not asked twice"
    assert await count_rows(again, "credit_ledger", "kind = 'commit'") == 1


async def test_a_job_handed_over_mid_generation_survives_a_restart(
    make_app: AppFactory, models_dir: Path, simulator: Simulator
) -> None:
    # The worker dies while the job is on it: the fallback moves it to ModelsLab. The service is
    # then restarted before ModelsLab has finished; the new one fetches it from ModelsLab
    # instead of asking the new worker, which never heard of it.
    simulator.config.processing_seconds = 2.0
    settings = local_app(models_dir, fallback_backend="modelslab")
    app = await make_app(**settings)
    assert isinstance(app.backend, FallbackBackend)
    worker = app.backend.primary
    assert isinstance(worker, LocalBackend) and worker._process is not None
    pid = worker._process.pid
    assert pid is not None

    job_id = await request(app, seed=6, width=512, height=768)
    await state_reached(app, job_id, lambda job: job.state == JobState.PROCESSING)
    os.kill(pid, signal.SIGKILL)
    moved = await state_reached(
        app, job_id, lambda job: (job.provider_id or "").startswith("modelslab:")
    )
    assert moved.state == JobState.PROCESSING
    await app.stop()

    again = await make_app(**settings)
    await again.engine.wait_idle()
    done = await again.jobs.get(job_id)
    assert done is not None and done.state == JobState.SUCCEEDED, done
    assert len(simulator.jobs) == 1, "fetched from ModelsLab, not submitted again"
    assert await count_rows(again, "credit_ledger", "kind = 'reserve'") == 1
    assert await count_rows(again, "credit_ledger", "kind = 'commit'") == 1


def test_the_core_runs_without_the_local_extras_heavy_packages() -> None:
    # torch, diffusers and friends come only with the [local] extra: the bot's own process
    # must import without them (the GPU worker imports them in its own process). numpy is a
    # core dependency since the face check, but only its worker processes import it: in the
    # service it slowed acknowledgements (see bot/faces/toolkit.py).
    script = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in {'numpy', 'dlib', 'torch', 'diffusers',"
        " 'transformers', 'cv2', 'insightface', 'onnxruntime'}:\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import bot.app, bot.backends, bot.cli, backends.local.backend, backends.local.process\n"
        "import adapters.discord, adapters.telegram\n"
        "print('imported')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "imported"
