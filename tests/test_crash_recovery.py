"""A real process killed with SIGKILL mid-job; a new one finishes the job, paying exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from backends.modelslab.simulator import Simulator
from tests.conftest import EXAMPLE_SELFIE, TEST_KEY, register_database
from tests.databases import query


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_for(predicate, within: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + within
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.05)


def _state(db: str) -> str | None:
    try:
        rows = query(db, "SELECT state FROM jobs")
    except (OperationalError, ProgrammingError):
        return None  # not migrated yet
    return str(rows[0][0]) if rows else None


# "keeping": the generator has answered a fetch and its image is being downloaded. The answer
# is written only with the job's end, so the row still says processing. "keeping at once": the
# submit itself was answered with the image; that answer is written first (the row would not
# say where to fetch it again), so the row says rehosting and the job is not submitted again.
@pytest.mark.parametrize("kill_when", ["submitted", "processing", "keeping", "keeping at once"])
async def test_killed_mid_job_then_restarted_finishes_the_job(
    tmp_path: Path, simulator: Simulator, kill_when: str, empty_database_url: str
) -> None:
    data_dir = tmp_path / "data"
    db = empty_database_url
    port = _free_port()
    env = {
        **os.environ,
        "DATA_DIR": str(data_dir),
        "DATABASE_URL": db,
        "IMAGE_STORE_SHARED": "1",
        "MODELSLAB_BASE_URL": simulator.base_url,
        "MODELSLAB_API_KEY": TEST_KEY,
        "WEB_PORT": str(port),
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "LOG_LEVEL": "INFO",
        "SELFIE_RETENTION_SECONDS": "0",
        # The killed process's lease on its job runs out this soon; then the service takes it.
        "JOB_LEASE_SECONDS": "2",  # no re-roll window: the selfie goes with the job
    }
    register_database(db)
    simulator.config.processing_seconds = 0.0 if kill_when == "keeping at once" else 2.0
    if kill_when == "submitted":
        simulator.config.delay_seconds = 2.0  # the submit call is in flight when we kill
    keeping = kill_when.startswith("keeping")
    if keeping:
        simulator.config.output_delay_seconds = 30.0  # the download is in flight when we kill
    row_state = {"keeping": "processing", "keeping at once": "rehosting"}.get(kill_when, kill_when)

    generate = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "generate",
        str(EXAMPLE_SELFIE),
        "--out",
        str(tmp_path / "out"),
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    if keeping:
        await _wait_for(lambda: simulator.output_requests > 0)
    else:
        await _wait_for(lambda: _state(db) == kill_when)
    generate.send_signal(signal.SIGKILL)
    assert await generate.wait() == -signal.SIGKILL
    assert _state(db) == row_state
    assert query(db, "SELECT kind, amount FROM credit_ledger") == [("reserve", 1)]

    simulator.config.delay_seconds = 0.0
    simulator.config.output_delay_seconds = 0.0
    service = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        "run",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await _wait_for(lambda: _state(db) in ("succeeded", "failed"), within=30)
    finally:
        service.send_signal(signal.SIGTERM)
        _, stderr = await service.communicate()
    assert service.returncode == 0, stderr.decode()
    assert _state(db) == "succeeded"
    ledger = sorted(query(db, "SELECT kind, pool, amount FROM credit_ledger"))
    assert ledger == [("commit", "unmetered", 1), ("reserve", "unmetered", 1)]
    (content_key,) = query(db, "SELECT content_key FROM outputs")[0]
    assert (data_dir / "images" / str(content_key)).is_file()
    assert not list((data_dir / "images").glob("inputs/*")), "the selfie outlived its job"
    if kill_when != "submitted":
        assert len(simulator.jobs) == 1, "resumed by fetching, not by submitting again"
