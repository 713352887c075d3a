"""LOG_FORMAT=json: one JSON object per line, labelled with the replica and with the job a line
concerns, secrets blanked as in the plain format."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from backends.modelslab.simulator import Simulator
from bot.cli.common import settings
from bot.log_context import bind_job, job_context, outside_job
from bot.logs import REDACTED, JsonFormatter
from tests.conftest import FAST, TEST_KEY, AppFactory
from tests.logs import assert_secret_absent, json_lines, service_logging
from tests.test_engine import run_job

log = logging.getLogger("tests.json_logs")

# JSON escapes quotes and backslashes: a secret holding them must go all the same.
AWKWARD_SECRET = 'sk-"quoted"\\back\\slashed'


class TaskNotes(logging.Filter):
    """Notes, for each line the handler writes, the asyncio task that logged it."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self._handler = handler
        self.lines: list[tuple[str | None, str]] = []

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # a thread's line
            task = None
        self.lines.append((task.get_name() if task else None, self._handler.format(record)))
        return True


def noted(handler: logging.Handler) -> TaskNotes:
    notes = TaskNotes(handler)
    handler.addFilter(notes)  # last: after the secrets are blanked and the job noted
    return notes


async def test_a_full_jobs_every_line_is_json_and_carries_its_job(
    make_app: AppFactory, simulator: Simulator, selfie: bytes
) -> None:
    simulator.config.processing_seconds = 0.2
    simulator.config.retry_after = 0
    simulator.config.inject = [429, 500]  # retried: more lines about the jobs
    with service_logging("DEBUG", [TEST_KEY], log_format="json", replica="replica-a") as written:
        notes = noted(logging.getLogger().handlers[0])
        # Polled only after the webhooks come: their lines are part of what is checked.
        app = await make_app(timings=replace(FAST, min_poll_seconds=10.0))
        # Two at once: a line of one must never be put down to the other.
        runs = await asyncio.gather(run_job(app, selfie), run_job(app, selfie, user="bob"))
        simulator.config.failure_rate = 1.0  # and one that fails, refunded
        runs.append(await run_job(app, selfie))
        await app.engine.wait_idle()
    job_ids = [job_id for job_id, _ in runs]

    entries = json_lines(written.getvalue())
    assert sorted(line for _, line in notes.lines) == sorted(written.getvalue().splitlines())
    assert entries and all(entry["replica"] == "replica-a" for entry in entries)
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys()
        assert datetime.fromisoformat(entry["time"]).utcoffset() is not None
        assert entry.get("job_id", job_ids[0]) in job_ids, entry
    by_task: dict[str, list[dict[str, Any]]] = {}
    for task, line in notes.lines:
        by_task.setdefault(task or "", []).append(json.loads(line))
    for job_id in job_ids:
        driven = by_task[f"job-{job_id}"]
        assert driven, "the job's task logged nothing"
        for entry in driven:
            assert entry["job_id"] == job_id, entry
            assert entry["operation"] == "headshot" and entry["platform"] == "test", entry
        mentioning = [e for e in entries if job_id in e["message"]]
        assert any("webhook for job" in e["message"] for e in mentioning)
        assert all(e.get("job_id") == job_id for e in mentioning), mentioning
    assert_secret_absent(written.getvalue(), TEST_KEY, json_format=True)


async def test_secrets_are_blanked_in_the_message_the_exception_and_every_field() -> None:
    secrets = [TEST_KEY, AWKWARD_SECRET]
    with (
        service_logging("DEBUG", secrets, log_format="json", replica="r1") as written,
        job_context("job-with-secret", operation="headshot", platform="discord"),
    ):
        log.info("sending %s and %s", TEST_KEY, AWKWARD_SECRET)
        try:
            raise ValueError(f"refused {AWKWARD_SECRET}\nsecond line {TEST_KEY}")
        except ValueError:
            log.exception("the call failed")
        log.warning("where %s was", TEST_KEY, stack_info=True)
    text = written.getvalue()
    sent, failed, stacked = json_lines(text)
    assert sent["message"] == f"sending {REDACTED} and {REDACTED}"
    assert "ValueError: refused [redacted]" in failed["exc"]
    assert "second line [redacted]" in failed["exc"]
    assert "stack" in stacked and stacked["message"] == f"where {REDACTED} was"
    assert sent["job_id"] == failed["job_id"] == "job-with-secret"
    assert (sent["operation"], sent["platform"], sent["replica"]) == ("headshot", "discord", "r1")
    for secret in (TEST_KEY, AWKWARD_SECRET):
        assert_secret_absent(text, secret, json_format=True)


async def test_the_job_is_on_its_tasks_lines_and_on_no_others() -> None:
    with service_logging("INFO", [], log_format="json") as written:

        async def drive() -> None:
            bind_job("j1", operation="avatar")
            log.info("in the job's task")
            await asyncio.create_task(child())
            await asyncio.create_task(shared(), context=outside_job())

        async def child() -> None:
            bind_job("j1", platform="telegram")  # the same job: the operation stays
            log.info("in a task it started")

        async def shared() -> None:
            log.info("in a task that serves every job")

        await asyncio.create_task(drive())
        log.info("outside")
    in_job, in_child, in_shared, outside = json_lines(written.getvalue())
    assert (in_job["job_id"], in_job["operation"]) == ("j1", "avatar")
    assert "platform" not in in_job
    assert (in_child["job_id"], in_child["operation"], in_child["platform"]) == (
        "j1",
        "avatar",
        "telegram",
    )
    assert "job_id" not in in_shared and "job_id" not in outside
    assert in_job["replica"]  # the host name when none is given


def test_the_plain_format_stays_the_default_and_json_is_chosen_by_its_setting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    with service_logging("INFO", []):
        settings(data=False)
        assert not isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
        monkeypatch.setenv("LOG_FORMAT", "json")
        monkeypatch.setenv("REPLICA_NAME", "eu-1")
        settings(data=False)
        formatter = logging.getLogger().handlers[0].formatter
        assert isinstance(formatter, JsonFormatter)
        line = formatter.format(logging.makeLogRecord({"msg": "hello", "levelname": "INFO"}))
        assert json.loads(line)["replica"] == "eu-1"
