"""Which job a log line concerns. Bound in a task that works on one job, it labels that task's
lines and those of the tasks it starts; the JSON log format (`bot.logs`) writes it on each line.

A task that serves every job (a dispatch pass) but may be started from one job's task is started
in `outside_job()`, so that its lines are not put down to that job.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from storage.jobs import JobRepository
    from storage.records import JobRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    job_id: str
    operation: str | None = None
    platform: str | None = None


_job: contextvars.ContextVar[JobContext | None] = contextvars.ContextVar("log_job", default=None)
# Whether a log line shows a job's platform (JSON logs): reading it costs a query per job driven,
# which plain logs, the default, do not pay.
_platform_shown = False


def show_platform(shown: bool) -> None:
    global _platform_shown
    _platform_shown = shown


def current_job() -> JobContext | None:
    return _job.get()


def bind_job(job_id: str, *, operation: str | None = None, platform: str | None = None) -> None:
    """Label the rest of this task's lines with the job. Only in a task of its own for this job
    (elsewhere: `job_context`). What is not given is kept from the job's binding in force."""
    _job.set(_merged(job_id, operation, platform))


@contextlib.contextmanager
def job_context(
    job_id: str, *, operation: str | None = None, platform: str | None = None
) -> Iterator[None]:
    """Label the lines logged inside the block with the job."""
    token = _job.set(_merged(job_id, operation, platform))
    try:
        yield
    finally:
        _job.reset(token)


def outside_job() -> contextvars.Context:
    """A copy of this context that concerns no job: for a task that serves them all."""
    context = contextvars.copy_context()
    context.run(_job.set, None)
    return context


async def bind_driven_job(job: JobRecord, jobs: JobRepository) -> None:
    """`bind_job` for a job the engine drives. Its record does not carry the platform: read
    from the job's user (one small read per job driven, only where lines show it: JSON logs).
    A failed read only leaves it out."""
    bind_job(job.id, operation=job.operation)
    if not _platform_shown:
        return
    try:
        platform = await jobs.platform(job.id)
    except Exception as exc:
        log.debug("job %s: its platform could not be read (%s)", job.id, type(exc).__name__)
        return
    bind_job(job.id, operation=job.operation, platform=platform)


def _merged(job_id: str, operation: str | None, platform: str | None) -> JobContext:
    bound = _job.get()
    if bound is not None and bound.job_id == job_id:
        operation = operation or bound.operation
        platform = platform or bound.platform
    return JobContext(job_id, operation, platform)
