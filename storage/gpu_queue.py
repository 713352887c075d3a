"""The GPU fleet's queue (Procrastinate, on PostgreSQL) and the results table its workers fill.

A replica defers one queue job per generation on the queue of its operation; a GPU worker takes
it, makes the images, writes them to the image store and the outcome to `gpu_results` with a
NOTIFY on RESULTS_CHANNEL in the same transaction, and Procrastinate then deletes the job.

A job's worker is judged alive by Procrastinate's own heartbeat row, against the database's
clock: a `doing` job whose worker is silent for `worker_timeout` (or whose row another worker
pruned) is STALLED, and a replica hands it back to the queue once, or gives it up.

Procrastinate logs each job's arguments (people's prompts) at INFO: its logger is kept at
WARNING. Procrastinate and psycopg are imported only when a queue is made: they come with the
`postgres` extra, and this module's types serve a single machine's bot too.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    import procrastinate

TASK_NAME = "headshot_bot.generate"
RESULTS_CHANNEL = "gpu_results"
# A result is written again and again while the database is out of reach (its images are in
# the store already), waiting up to this long between tries.
RESULT_RETRY_MAX_SECONDS = 30.0
# What a result row may hold (a job makes at most 4 images; a reason is one short sentence).
MAX_IMAGES = 8
MAX_REASON = 300
UNREADABLE = "the GPU worker sent back an unreadable result"

log = logging.getLogger(__name__)


def queue_name(operation: str) -> str:
    return f"gpu.{operation}"


@dataclass(frozen=True)
class QueuedGeneration:
    track_id: str  # our job id
    params: dict[str, Any]  # GenerationParams.to_dict(), seed fixed
    face_key: str
    pose_key: str | None

    @property
    def operation(self) -> str:
        return str(self.params["operation"])


@dataclass(frozen=True)
class StoredImage:
    """One output a worker wrote to the image store."""

    key: str
    content_type: str
    width: int
    height: int
    size_bytes: int


@dataclass(frozen=True)
class GenerationResult:
    """One row of gpu_results."""

    ok: bool
    images: tuple[StoredImage, ...] = ()
    reason: str | None = None  # our own words, shown to the user when refused
    refused: bool = False  # the request itself cannot be served (no face…): no fallback
    seconds: float | None = None  # generation time on the GPU


class QueueState(StrEnum):
    WAITING = "waiting"  # todo
    RUNNING = "running"  # doing, its worker heartbeats
    STALLED = "stalled"  # doing, its worker has no heartbeat for `timeout` (killed)
    GONE = "gone"  # no such queue job (finished without a result row, or never there)


class HandBack(Exception):
    """Raised by a handler for a job it has not started (a draining worker's staged job): the
    job goes back to its queue as it was, for another worker. Not counted as a requeue."""


@dataclass(frozen=True)
class QueueStatus:
    state: QueueState
    requeued: int  # how many times it was handed back to the queue


def psycopg_params(database_url: str) -> dict[str, str]:
    """A SQLAlchemy PostgreSQL URL as psycopg's connection keywords. The password stays a
    keyword of its own: no connection string holding it is ever made (or logged)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise ValueError("the GPU fleet's queue needs PostgreSQL: DATABASE_URL is another database")
    params: dict[str, Any] = {
        "host": url.host,
        "port": url.port,
        "user": url.username,
        "password": url.password,
        "dbname": url.database,
    }
    for name, value in url.query.items():
        params[name] = value if isinstance(value, str) else value[-1]
    return {name: str(value) for name, value in params.items() if value is not None}


def _quiet_procrastinate() -> None:
    logging.getLogger("procrastinate").setLevel(logging.WARNING)


def _app(database_url: str, *, connections: int) -> tuple[procrastinate.App, Any]:
    """A Procrastinate app on its own pool of at most `connections`, and the pool's connector."""
    import procrastinate

    _quiet_procrastinate()
    connector = procrastinate.PsycopgConnector(
        kwargs=psycopg_params(database_url), min_size=1, max_size=connections
    )
    return procrastinate.App(connector=connector), connector


# A job's worker is silent when its heartbeat row is older than the timeout, or gone (pruned
# by another worker: the job's worker_id is then NULL).
_SILENT_WORKER = """
    NOT EXISTS (
        SELECT 1 FROM procrastinate_workers w
        WHERE w.id = j.worker_id
            AND w.last_heartbeat >= now() - make_interval(secs => %(timeout)s)
    )
"""


def _judging_workers(query: str) -> str:
    """A query whose `{silent}` is the test of a job's (`j`) worker being silent."""
    return query.replace("{silent}", _SILENT_WORKER)


_STATUS = _judging_workers(
    """
    SELECT j.status::text, COALESCE((j.args->>'requeued')::integer, 0), {silent} AS silent
    FROM procrastinate_jobs j WHERE j.id = %(id)s
"""
)
_LOCK_STALLED = _judging_workers(
    """
    SELECT j.queue_name FROM procrastinate_jobs j
    WHERE j.id = %(id)s AND j.status = 'doing' AND {silent}
    FOR UPDATE OF j
"""
)
# Back to `todo`, counted in the job's arguments (Procrastinate's own `attempts` also counts the
# staged jobs a draining worker hands back), and the queue's workers told at once.
_COUNT_REQUEUE = """
    UPDATE procrastinate_jobs
    SET args = args || jsonb_build_object(
        'requeued', COALESCE((args->>'requeued')::integer, 0) + 1
    )
    WHERE id = %(id)s
"""
_RETRY = """
    SELECT procrastinate_retry_job_v2(
        %(id)s, NULL::timestamptz, NULL::integer, NULL::varchar, NULL::varchar
    ),
    pg_notify(
        'procrastinate_queue_v1#' || %(queue)s,
        json_build_object('type', 'job_inserted', 'job_id', %(id)s::bigint)::text
    )
"""
_STALLED_TRACKS = _judging_workers(
    """
    SELECT j.args->>'track_id' FROM procrastinate_jobs j
    WHERE j.task_name = %(task)s AND j.status = 'doing' AND {silent}
        AND NOT EXISTS (SELECT 1 FROM gpu_results r WHERE r.queue_id = j.id)
    ORDER BY j.id
"""
)
# A worker killed after writing its result, before Procrastinate deleted the job.
_DROP_FINISHED_STALLED = _judging_workers(
    """
    DELETE FROM procrastinate_jobs j
    WHERE j.status = 'doing' AND {silent}
        AND EXISTS (SELECT 1 FROM gpu_results r WHERE r.queue_id = j.id)
"""
)
_ALREADY_SENT = """
    SELECT id FROM procrastinate_jobs
    WHERE task_name = %(task)s AND args->>'track_id' = %(track)s AND status IN ('todo', 'doing')
    ORDER BY id DESC LIMIT 1
"""
_RESULT = """
    SELECT ok, refused, reason, images, seconds FROM gpu_results WHERE queue_id = %(id)s
"""
# ON CONFLICT: a late duplicate (a worker thought dead) never overwrites nor announces again.
_WRITE_RESULT = """
    WITH written AS (
        INSERT INTO gpu_results
            (queue_id, job_id, ok, refused, reason, images, seconds, worker_id, finished_at)
        VALUES (%(queue_id)s, %(job_id)s, %(ok)s, %(refused)s, %(reason)s, %(images)s,
            %(seconds)s, %(worker_id)s, now())
        ON CONFLICT (queue_id) DO NOTHING
        RETURNING job_id
    )
    SELECT pg_notify(%(channel)s, job_id) FROM written
"""


class GpuQueue:
    """The replica's side: defers generations, reads their results and their jobs' states."""

    def __init__(self, database_url: str, *, worker_timeout: float) -> None:
        self._app, self._connector = _app(database_url, connections=5)
        self._timeout = worker_timeout

    async def open(self) -> None:
        await self._app.open_async()

    async def aclose(self) -> None:
        await self._app.close_async()

    async def send(self, generation: QueuedGeneration) -> int:
        """Defer one generation; its Procrastinate job id. A generation of the same job still
        queued or running (sent before a crash that came before its id was recorded) is that
        one: a job is never made twice at once."""
        async with self._connector.pool.connection() as conn:
            cursor = await conn.execute(
                _ALREADY_SENT, {"task": TASK_NAME, "track": generation.track_id}
            )
            sent = await cursor.fetchone()
        if sent is not None:
            return int(sent[0])
        deferrer = self._app.configure_task(name=TASK_NAME, queue=queue_name(generation.operation))
        return await deferrer.defer_async(
            track_id=generation.track_id,
            params=generation.params,
            face_key=generation.face_key,
            pose_key=generation.pose_key,
        )

    async def result(self, queue_id: int) -> GenerationResult | None:
        async with self._connector.pool.connection() as conn:
            row = await (await conn.execute(_RESULT, {"id": queue_id})).fetchone()
        if row is None:
            return None
        ok, refused, reason, images, seconds = row
        try:
            stored = tuple(_stored_image(image) for image in images[:MAX_IMAGES])
        except (TypeError, ValueError, KeyError):
            log.warning("queue job %s: its result names its images unreadably", queue_id)
            return GenerationResult(ok=False, reason=UNREADABLE)
        return GenerationResult(
            ok=bool(ok),
            images=stored,
            reason=reason[:MAX_REASON] if isinstance(reason, str) else None,
            refused=bool(refused),
            seconds=float(seconds) if isinstance(seconds, int | float) else None,
        )

    async def status(self, queue_id: int) -> QueueStatus:
        async with self._connector.pool.connection() as conn:
            cursor = await conn.execute(_STATUS, {"id": queue_id, "timeout": self._timeout})
            row = await cursor.fetchone()
        if row is None:
            return QueueStatus(QueueState.GONE, 0)
        status, requeued, silent = row
        if status == "todo":
            return QueueStatus(QueueState.WAITING, requeued)
        if status == "doing":
            return QueueStatus(QueueState.STALLED if silent else QueueState.RUNNING, requeued)
        return QueueStatus(QueueState.GONE, requeued)

    async def requeue(self, queue_id: int) -> bool:
        """A STALLED job back to `todo`, for another worker. False if it is not stalled (any
        more): another replica handed it back first, or its worker finished it."""
        async with self._connector.pool.connection() as conn, conn.transaction():
            params = {"id": queue_id, "timeout": self._timeout}
            row = await (await conn.execute(_LOCK_STALLED, params)).fetchone()
            if row is None:
                return False
            await conn.execute(_COUNT_REQUEUE, {"id": queue_id})
            await conn.execute(_RETRY, {"id": queue_id, "queue": row[0]})
        return True

    async def give_up(self, queue_id: int) -> bool:
        """A STALLED job ends: deleted, so no worker takes it again. False, and nothing done,
        if it is not stalled (any more): its worker's heartbeat came back, or it finished."""
        async with self._connector.pool.connection() as conn, conn.transaction():
            params = {"id": queue_id, "timeout": self._timeout}
            if await (await conn.execute(_LOCK_STALLED, params)).fetchone() is None:
                return False
            await conn.execute("DELETE FROM procrastinate_jobs WHERE id = %(id)s", params)
            return True

    async def withdraw(self, queue_id: int) -> bool:
        """A job still waiting for a worker leaves the queue (none serves its operation any
        more). False, and nothing done, if a worker has taken it."""
        async with self._connector.pool.connection() as conn:
            cursor = await conn.execute(
                "DELETE FROM procrastinate_jobs WHERE id = %(id)s AND status = 'todo'",
                {"id": queue_id},
            )
            return cursor.rowcount == 1

    async def stalled_tracks(self) -> list[str]:
        """Our job ids of the STALLED queue jobs that have no result yet."""
        async with self._connector.pool.connection() as conn:
            cursor = await conn.execute(
                _STALLED_TRACKS, {"task": TASK_NAME, "timeout": self._timeout}
            )
            return [str(track) for (track,) in await cursor.fetchall()]

    async def forget_results(self, older_than: timedelta) -> int:
        """Drop the results older than that (read long ago), and the jobs of workers killed
        between writing their result and ending their job. The number of results dropped."""
        async with self._connector.pool.connection() as conn, conn.transaction():
            await conn.execute(_DROP_FINISHED_STALLED, {"timeout": self._timeout})
            cursor = await conn.execute(
                "DELETE FROM gpu_results WHERE finished_at < now() - %(age)s",
                {"age": older_than},
            )
            return cursor.rowcount


def _stored_image(image: Any) -> StoredImage:
    """One image named in a result row, checked (the row comes from a worker)."""
    key, content_type = image["key"], image["content_type"]
    width, height, size = image["width"], image["height"], image["size_bytes"]
    if not (isinstance(key, str) and isinstance(content_type, str) and len(key) <= 255):
        raise ValueError("an image's key and type are text")
    if not all(isinstance(n, int) and 0 < n < 2**31 for n in (width, height, size)):
        raise ValueError("an image's sizes are positive integers")
    return StoredImage(key, content_type[:64], width, height, size)


Handler = Callable[[QueuedGeneration], Awaitable[GenerationResult]]


class QueueWorker:
    """The GPU worker's side: takes the jobs of its operations and writes their results."""

    def __init__(
        self,
        database_url: str,
        *,
        worker_id: str,
        heartbeat_seconds: float,
        worker_timeout: float,
    ) -> None:
        self._database_url = database_url
        self._worker_id = worker_id
        self._heartbeat_seconds = heartbeat_seconds
        self._worker_timeout = worker_timeout

    async def work(
        self,
        operations: Sequence[str],
        capacity: int,
        handle: Handler,
        stop: asyncio.Event,
    ) -> None:
        """Take jobs until `stop` is set; then stop taking any and return once the running
        ones have finished and their results are written. Raises if Procrastinate's worker
        stops by itself (it lost the database)."""
        if not operations:
            raise ValueError("a GPU worker needs at least one operation to serve")
        if stop.is_set():
            return
        # Its jobs, and beside them: fetching, heartbeats, ending jobs.
        app, connector = _app(self._database_url, connections=capacity + 3)
        import procrastinate

        # A HandBack is Procrastinate's retry: the job is `todo` again, at once.
        hand_back = procrastinate.RetryStrategy(retry_exceptions={HandBack})
        app.task(name=TASK_NAME, pass_context=True, retry=hand_back)(self._task(handle, connector))
        async with app.open_async():
            running = asyncio.create_task(
                app.run_worker_async(
                    queues=[queue_name(operation) for operation in operations],
                    concurrency=capacity,
                    install_signal_handlers=False,
                    delete_jobs="always",
                    listen_notify=True,
                    update_heartbeat_interval=self._heartbeat_seconds,
                    stalled_worker_timeout=self._worker_timeout,
                    wait=True,
                ),
                name="gpu queue worker",
            )
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({running, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
                # Procrastinate's worker takes a cancellation as its stop: it fetches nothing
                # more, waits for its running jobs and unregisters.
                running.cancel()
                await asyncio.wait({running})
            if not running.cancelled():
                running.result()
                if not stop.is_set():
                    raise RuntimeError("the GPU queue worker stopped by itself")

    def _task(self, handle: Handler, connector: Any) -> Callable[..., Awaitable[None]]:
        async def generate(context: procrastinate.JobContext, **args: Any) -> None:
            queue_id = context.job.id
            assert queue_id is not None
            track_id = str(args.get("track_id", ""))
            try:
                generation = QueuedGeneration(
                    track_id=str(args["track_id"]),
                    params=dict(args["params"]),
                    face_key=str(args["face_key"]),
                    pose_key=None if args.get("pose_key") is None else str(args["pose_key"]),
                )
            except (KeyError, TypeError, ValueError):
                log.warning("queue job %s is not a generation this worker understands", queue_id)
                result = GenerationResult(ok=False, reason="the GPU worker could not read the job")
            else:
                try:
                    result = await handle(generation)
                except HandBack:
                    log.info("queue job %s handed back to the queue", queue_id)
                    raise
                except Exception as error:
                    log.warning(
                        "queue job %s failed (%s)", queue_id, type(error).__name__, exc_info=True
                    )
                    result = GenerationResult(
                        ok=False, reason=f"the GPU worker failed ({type(error).__name__})"
                    )
            try:
                await self._write_result(connector, queue_id, track_id, result)
            except Exception as error:
                # Not raised on: Procrastinate would log the failed job with its arguments
                # (a prompt). The replica finds the job gone without a result and refunds it.
                log.error("queue job %s: its result could not be written (%s)", queue_id, error)

        return generate

    async def _write_result(
        self, connector: Any, queue_id: int, track_id: str, result: GenerationResult
    ) -> None:
        """The results row and its NOTIFY, in one statement (one transaction)."""
        import psycopg
        import psycopg_pool
        from psycopg.types.json import Json

        values = {
            "queue_id": queue_id,
            "job_id": track_id,
            "ok": result.ok,
            "refused": result.refused,
            "reason": result.reason[:MAX_REASON] if result.reason else None,
            "images": Json([asdict(image) for image in result.images]),
            "seconds": result.seconds,
            "worker_id": self._worker_id,
            "channel": RESULTS_CHANNEL,
        }
        wait = 0.5
        while True:
            try:
                async with connector.pool.connection() as conn:
                    await conn.execute(_WRITE_RESULT, values)
                return
            except (psycopg.OperationalError, psycopg_pool.PoolTimeout):
                # Never given up: the images are made, and a write after the job was handed to
                # another worker changes nothing (ON CONFLICT). A stop waits for this too.
                log.warning("writing the result of queue job %s failed: retrying", queue_id)
                await asyncio.sleep(wait)
                wait = min(RESULT_RETRY_MAX_SECONDS, wait * 2)
