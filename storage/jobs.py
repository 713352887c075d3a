"""Jobs and their outputs: creation with its credit reservation, guarded transitions, settlement."""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Update,
    bindparam,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import dispatch, identity, leases, ledger
from storage.accounts import community_id_in, user_id_in
from storage.audit import write_audit
from storage.database import Database
from storage.deliveries import insert_delivery, release_deliveries, renew_deliveries
from storage.identity import MeasuredImage
from storage.leases import Lease, lease_until
from storage.models import Job, Output, User, utcnow
from storage.pseudonyms import Pseudonyms
from storage.records import (
    FINISHED_STATES,
    AuditNote,
    GeneratorAnswer,
    JobRecord,
    JobState,
    OutputRecord,
    PlatformCommunity,
    PlatformUser,
)


@dataclass(frozen=True)
class NewJob:
    id: str
    # The user's id, or who they are on their platform: then their row is found (or made, on
    # first sight) in the job's own transaction, and so is the community's.
    user: int | PlatformUser
    community: int | PlatformCommunity | None
    operation: str
    params: dict[str, Any]
    credits: int
    selfie_key: str | None
    pose_key: str | None
    seed: int | None
    style: str | None = None
    user_prompt: str | None = None
    # Where a chat adapter will show the result: (platform, its own address for it), and in
    # which language (the asker's, when known).
    delivery: tuple[str, Mapping[str, Any]] | tuple[str, Mapping[str, Any], str] | None = None
    # The request that asks for it (a chat platform's update or interaction): the one job of
    # that request, whatever number of times it is handled.
    request_key: str | None = None


class TooManyActive(Exception):
    """The user already has `active` unfinished jobs, the most allowed at once."""

    def __init__(self, active: int) -> None:
        super().__init__(f"{active} jobs are already queued or running")
        self.active = active


class JobRepository:
    def __init__(self, db: Database, pseudonyms: Pseudonyms | None = None) -> None:
        """`pseudonyms`: a user made by a job's transaction takes back their forgotten usage
        (see `storage.accounts`); without them, it is not carried over."""
        self._db = db
        self._pseudonyms = pseudonyms

    async def create(
        self,
        job: NewJob,
        *,
        daily_quota: int | None,
        today: date,
        max_active: int | None = None,
        lease: Lease | None = None,
    ) -> JobRecord:
        """Insert a queued job and reserve its credits in one transaction. With `lease`, the
        job is the lease owner's to drive from the start.

        Raises `ledger.QuotaExceeded` when the user lacks the credits, and `TooManyActive` when
        `max_active` is set and the user already has that many unfinished jobs; either way
        having written nothing. The count is taken inside the write transaction, so two
        requests at once cannot both slip under the limit.

        A job whose request key an earlier job has is not made: that job comes back instead
        (its id is not `job.id`), with nothing written.
        """
        try:
            return await self._create(
                job, daily_quota=daily_quota, today=today, max_active=max_active, lease=lease
            )
        except IntegrityError:
            # The same request at the same moment elsewhere: one insert won, this one lost.
            existing = await self._by_request(job.request_key) if job.request_key else None
            if existing is None:
                raise
            return existing

    async def _create(
        self,
        job: NewJob,
        *,
        daily_quota: int | None,
        today: date,
        max_active: int | None,
        lease: Lease | None,
    ) -> JobRecord:
        now = utcnow()
        values = {
            "id": job.id,
            "operation": job.operation,
            "params": job.params,
            "state": JobState.QUEUED.value,
            "credits_reserved": job.credits,
            "selfie_key": job.selfie_key,
            "pose_key": job.pose_key,
            "seed": job.seed,
            "style": job.style,
            "user_prompt": job.user_prompt,
            "attempts": 0,
            "created_at": now,
            "updated_at": now,
            "request_key": job.request_key,
        }

        async def create(conn: AsyncConnection) -> JobRecord:
            if job.request_key is not None:
                made = await conn.execute(
                    select(_JOBS).where(_JOBS.c.request_key == job.request_key)
                )
                earlier = made.one_or_none()
                if earlier is not None:
                    return job_record(earlier)
            user_id = await self._user_id(conn, job.user)
            values["user_id"] = user_id
            values["community_id"] = await _community_id(conn, job.community)
            if max_active is not None or daily_quota is not None:
                await ledger.lock_user(conn, user_id)
            if max_active is not None:
                active = await _active_count(conn, user_id)
                if active >= max_active:
                    raise TooManyActive(active)
            if lease is not None:
                values["lease_owner"] = lease.owner
                values["lease_expires_at"] = lease_until(conn, lease.seconds)
            if any(isinstance(value, ColumnElement) for value in values.values()):
                # The database's clock (PostgreSQL's, for a lease's expiry) is an expression,
                # built into the statement; plain values go into the one built once.
                row = (await conn.execute(insert(_JOBS).values(values).returning(_JOBS))).one()
            else:
                row = (await conn.execute(_INSERT_JOB, values)).one()
            if job.delivery is not None:
                await insert_delivery(conn, job.id, *job.delivery, lease=lease)
            await ledger.reserve(
                conn,
                user_id=user_id,
                job_id=job.id,
                credits=job.credits,
                daily_quota=daily_quota,
                today=today,
            )
            return job_record(row)

        return await self._db.run_write(create)

    async def _user_id(self, conn: AsyncConnection, user: int | PlatformUser) -> int:
        if isinstance(user, int):
            return user
        return await user_id_in(conn, user, self._pseudonyms)

    async def _by_request(self, request_key: str) -> JobRecord | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(select(_JOBS).where(_JOBS.c.request_key == request_key))
            ).one_or_none()
            return job_record(row) if row else None

    async def get(self, job_id: str) -> JobRecord | None:
        async with self._db.read() as conn:
            row = (await conn.execute(select(_JOBS).where(_JOBS.c.id == job_id))).one_or_none()
            return job_record(row) if row else None

    async def id_for_webhook(self, webhook_token_hash: str) -> str | None:
        """The unfinished job a provider's webhook token belongs to (a finished job's token is
        cleared when it ends)."""
        async with self._db.read() as conn:
            found = await conn.execute(
                select(_JOBS.c.id).where(
                    _JOBS.c.webhook_token_hash == webhook_token_hash,
                    _JOBS.c.state.in_(_UNFINISHED),
                )
            )
            return found.scalar_one_or_none()

    async def platform(self, job_id: str) -> str | None:
        """The chat platform of the job's user ("discord", "telegram", ...)."""
        async with self._db.read() as conn:
            found = await conn.execute(
                select(_USERS.c.platform)
                .join(_JOBS, _JOBS.c.user_id == _USERS.c.id)
                .where(_JOBS.c.id == job_id)
            )
            return found.scalar_one_or_none()

    async def transition(
        self,
        job_id: str,
        expected: Iterable[JobState],
        to: JobState,
        *,
        owner: str | None = None,
        **fields: Any,
    ) -> JobRecord | None:
        """Move a job to `to` only if it is in one of `expected` (and, given an `owner`, only
        while that process holds its lease): the job as it now is, or None."""
        if to in FINISHED_STATES:
            raise ValueError("finish a job with succeed() or fail(): they settle its credits")
        return await self._db.run_write(
            lambda conn: _guarded_update(conn, job_id, expected, to, fields, owner=owner)
        )

    async def succeed(
        self,
        job_id: str,
        outputs: list[OutputRecord],
        *,
        generation_time: float | None,
        keep_inputs_until: datetime | None = None,
        owner: str | None = None,
        measured: Sequence[MeasuredImage] = (),
        answer: GeneratorAnswer | None = None,
    ) -> bool:
        """rehosting -> succeeded: keep the outputs, commit a credit per image, release the rest.

        Given the generator's `answer`, the job may still be submitted or processing: the answer
        is written with its end, in this transaction (a job whose images are kept in
        milliseconds is not moved to rehosting first: one write fewer). Without it, the job
        must be rehosting, its answer written already.

        The job's selfie and pose image are let go (the caller deletes them) unless
        `keep_inputs_until` says to keep them until then, so that the job can be re-rolled.

        With the identity gate: `measured` are the last attempt's measures, written without
        their images; the earlier attempts' rows let go of theirs (the caller deletes those not
        among `outputs`). An output that failed the gate is delivered but not paid for: its
        credit is committed and then refunded, once, in this transaction.
        """

        async def succeed(conn: AsyncConnection) -> bool:
            fields = {
                "finished_at": utcnow(),
                "generation_time": generation_time,
                **_inputs_after_finish(keep_inputs_until),
            }
            expected = [JobState.REHOSTING]
            if answer is not None:
                expected += [JobState.SUBMITTED, JobState.PROCESSING]
                fields.update(
                    provider_id=answer.provider_id,
                    provider_outputs=list(answer.outputs),
                    completed_at=answer.completed_at,
                )
            moved = await _guarded_update(
                conn, job_id, expected, JobState.SUCCEEDED, fields, owner=owner
            )
            if moved is None:
                return False
            if outputs:
                now = utcnow()
                await conn.execute(
                    _INSERT_OUTPUTS, [{**asdict(out), "created_at": now} for out in outputs]
                )
            await ledger.settle(conn, job_id=job_id, delivered=len(outputs))
            await identity.record(conn, measured, keep=False)
            if moved.identity_retries:  # only a retry for the gate kept earlier images
                await identity.let_go(conn, job_id)
            unlike = sum(1 for out in outputs if out.identity_passed is False)
            if unlike:
                # What the user paid (nothing, unmetered) bounds what comes back.
                credits = min(unlike, await ledger.committed(conn, job_id))
                if credits:
                    await ledger.refund(conn, user_id=moved.user_id, job_id=job_id, credits=credits)
            return True

        return await self._db.run_write(succeed)

    async def retry_for_identity(
        self, job: JobRecord, measured: Sequence[MeasuredImage], *, owner: str | None = None
    ) -> JobRecord | None:
        """rehosting -> queued for another provider attempt, because an output failed the
        identity gate: the gate's retry counter goes up by one, only from the value `job` has
        (two processes cannot both count the same retry), and the measured images are kept for
        the job's end. The job's place in the fair line is cleared: the next dispatch pass
        places it again, like a new job. The job as it now is, or None."""
        fields = {
            "identity_retries": job.identity_retries + 1,
            "provider_id": None,
            "provider_outputs": None,
            "eta_at": None,
            "completed_at": None,
            "webhook_token_hash": None,
            "queue_round": None,
            "queue_slot": None,
            "queue_seq": None,
            "queue_community": None,
            "dispatched_at": None,
        }
        async with self._db.write() as conn:
            moved = await _guarded_update(
                conn,
                job.id,
                [JobState.REHOSTING],
                JobState.QUEUED,
                fields,
                owner=owner,
                retries=job.identity_retries,
            )
            if moved is not None:
                await identity.record(conn, measured, keep=True)
            return moved

    async def unused_images(self, keys: Iterable[str]) -> list[str]:
        """Of these generated images (an ended job's, not delivered), those nothing else uses."""
        wanted = set(keys)
        async with self._db.read() as conn:
            used = await identity.in_use(conn, wanted)
        return sorted(wanted - used)

    async def kept_images(self, job_id: str) -> list[MeasuredImage]:
        """The images a running job's earlier attempts made and the identity gate measured."""
        async with self._db.read() as conn:
            return await identity.kept(conn, job_id)

    async def fail(
        self,
        job_id: str,
        reason: str,
        *,
        state: JobState = JobState.FAILED,
        keep_inputs_until: datetime | None = None,
        owner: str | None = None,
    ) -> bool:
        """Any unfinished state -> failed (or cancelled), releasing every reserved credit once.

        Inputs are let go or kept as in `succeed` ("Try again" re-rolls a failed job too).
        """
        if state not in (JobState.FAILED, JobState.CANCELLED):
            raise ValueError(f"fail() ends a job as failed or cancelled, not {state}")
        unfinished = [s for s in JobState if s not in FINISHED_STATES]

        async def fail(conn: AsyncConnection) -> bool:
            fields = {
                "error": reason,
                "finished_at": utcnow(),
                **_inputs_after_finish(keep_inputs_until),
            }
            waiting = await dispatch.waiting_place(conn, job_id)
            moved = await _guarded_update(conn, job_id, unfinished, state, fields, owner=owner)
            if moved is not None:
                if waiting is not None:
                    await dispatch.give_up_place(conn, waiting)
                await ledger.settle(conn, job_id=job_id, delivered=0)
                # The caller deletes them: it read them with `kept_images` before.
                await identity.let_go(conn, job_id)
            return moved is not None

        return await self._db.run_write(fail)

    async def outputs(self, job_id: str) -> list[OutputRecord]:
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(*_OUTPUT_COLUMNS)
                .where(_OUTPUTS.c.job_id == job_id)
                .order_by(_OUTPUTS.c.position)
            )
            return [OutputRecord(*row) for row in rows]

    async def output_by_token(self, token: str) -> OutputRecord | None:
        async with self._db.read() as conn:
            row = (
                await conn.execute(select(*_OUTPUT_COLUMNS).where(_OUTPUTS.c.public_token == token))
            ).one_or_none()
            return OutputRecord(*row) if row else None

    async def referenced_input_keys(self) -> set[str]:
        """The stored selfies and pose images some job still points at: unfinished jobs, and
        finished ones keeping their inputs for a re-roll. Any other input is an orphan."""
        async with self._db.read() as conn:
            rows = await conn.execute(select(_JOBS.c.selfie_key, _JOBS.c.pose_key))
            return {key for pair in rows for key in pair if key}

    async def expired_inputs(self, now: datetime) -> list[tuple[str, tuple[str, ...]]]:
        """Finished jobs whose kept inputs are due to go, oldest due first: (job id, keys).

        A re-roll may reuse its original's selfie, so a key still pointed at by a job that is
        not due here is left out of that tuple. Delete the keys listed and `clear_inputs` the
        job, in either order: a crash in between leaves a key the next sweep deletes again, or
        an orphan for the start-up sweep.
        """
        async with self._db.read() as conn:
            due = (
                await conn.execute(
                    select(_JOBS.c.id, _JOBS.c.selfie_key, _JOBS.c.pose_key)
                    .where(
                        _JOBS.c.state.in_(_FINISHED),
                        _JOBS.c.inputs_expire_at <= now,
                        or_(_JOBS.c.selfie_key.is_not(None), _JOBS.c.pose_key.is_not(None)),
                    )
                    .order_by(_JOBS.c.inputs_expire_at, _JOBS.c.id)
                )
            ).all()
            due_ids = [row.id for row in due]
            keys = {key for row in due for key in (row.selfie_key, row.pose_key) if key}
            still_needed = await input_keys_in_use(conn, keys, excluding=due_ids)
        return [
            (
                row.id,
                tuple(
                    key for key in (row.selfie_key, row.pose_key) if key and key not in still_needed
                ),
            )
            for row in due
        ]

    async def clear_inputs(self, job_id: str) -> None:
        """Let go of a finished job's kept inputs (the caller deletes them from the store)."""
        async with self._db.write() as conn:
            await conn.execute(
                update(_JOBS)
                .where(_JOBS.c.id == job_id, _JOBS.c.state.in_(_FINISHED))
                .values(selfie_key=None, pose_key=None, inputs_expire_at=None)
            )

    async def renew_leases(self, lease: Lease, driving: Collection[str]) -> set[str]:
        """Extend the leases `lease.owner` holds on the unfinished jobs it is `driving`, and on
        the results it is showing; those of `driving` it still holds (a job not among them
        ended, or was taken over by another process). A job it holds but no longer drives (its
        task ended without ending the job) is left to run out, for another process to take."""
        held_here = [
            _JOBS.c.state.in_(_UNFINISHED),
            _JOBS.c.id.in_(list(driving)),
        ]
        async with self._db.write() as conn:
            await renew_deliveries(conn, lease)
            if not driving:
                return set()
            await leases.renew(conn, _JOBS, lease, *held_here, key=_JOBS.c.id)
            held = await conn.execute(
                select(_JOBS.c.id).where(_JOBS.c.lease_owner == lease.owner, *held_here)
            )
            return {row.id for row in held}

    async def take_over(self, lease: Lease, *, limit: int = 100) -> list[JobRecord]:
        """Unfinished jobs nobody holds a live lease on (their process stopped or died), now
        `lease.owner`'s, oldest first. Rows another process is taking at the same moment are
        skipped, not waited for (FOR UPDATE SKIP LOCKED; SQLite serialises writers anyway)."""
        async with self._db.write() as conn:
            rows = await leases.claim_free(
                conn,
                _JOBS,
                lease,
                key=_JOBS.c.id,
                where=[_JOBS.c.state.in_(_UNFINISHED)],
                order_by=[_JOBS.c.created_at, _JOBS.c.id],
                limit=limit,
                returning=[_JOBS],
            )
            return sorted((job_record(row) for row in rows), key=lambda j: (j.created_at, j.id))

    async def release_leases(self, owner: str) -> None:
        """Let go of every lease `owner` holds (a clean stop): others may take its jobs, and
        the results it was showing, at once."""
        async with self._db.write() as conn:
            await dispatch.lock_line(conn)
            await release_deliveries(conn, owner)
            await leases.release(conn, _JOBS, owner, _JOBS.c.state.in_(_UNFINISHED))

    async def refund(self, job_id: str, *, audit: AuditNote) -> int:
        """Give a succeeded job's committed credits back to its user, as granted credits.

        Returns the credits refunded, or 0 having written nothing when the job did not
        succeed, cost its user nothing (unmetered) or was refunded before. The job's own ledger
        entries stay: today's use is still counted.
        """
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    select(_JOBS.c.state, _JOBS.c.user_id).where(_JOBS.c.id == job_id)
                )
            ).one_or_none()
            if row is None or row.state != JobState.SUCCEEDED:
                return 0
            credits = await ledger.committed(conn, job_id)
            if credits == 0 or await ledger.refunded(conn, job_id):
                return 0
            await ledger.refund(conn, user_id=row.user_id, job_id=job_id, credits=credits)
            await write_audit(conn, audit)
            return credits


# The shortest job id prefix a user may type (ids are 32 hex digits; 6 make a clash rare).
MIN_REF_LENGTH = 6


def id_matches(ref: str) -> Any:
    """The job's id is `ref` or starts with it. substr, not LIKE: a ref is never a pattern."""
    return or_(_JOBS.c.id == ref, func.substr(_JOBS.c.id, 1, len(ref)) == ref)


def one_match(rows: Sequence[Any], ref: str) -> Any | None:
    """Of the rows `id_matches` found (fetch two), the one `ref` names: None if ambiguous."""
    exact = [row for row in rows if row.id == ref]
    if exact:
        return exact[0]
    return rows[0] if len(rows) == 1 else None


_JOBS = Job.__table__
_OUTPUTS = Output.__table__
_USERS = User.__table__
_OUTPUT_COLUMNS = [_OUTPUTS.c[f.name] for f in fields(OutputRecord)]
_FINISHED = [s.value for s in FINISHED_STATES]
_UNFINISHED = [s.value for s in JobState if s not in FINISHED_STATES]
# Built once, as every job runs them (see `_guarded_statement`).
_INSERT_JOB = insert(_JOBS).returning(_JOBS)
_INSERT_OUTPUTS = insert(_OUTPUTS)


def _inputs_after_finish(keep_until: datetime | None) -> dict[str, Any]:
    """A finished job needs no webhook any more, and its inputs only if kept for a re-roll."""
    if keep_until is None:
        return {"selfie_key": None, "pose_key": None, "webhook_token_hash": None}
    return {"inputs_expire_at": keep_until, "webhook_token_hash": None}


async def _community_id(
    conn: AsyncConnection, community: int | PlatformCommunity | None
) -> int | None:
    if community is None or isinstance(community, int):
        return community
    return await community_id_in(conn, community)


async def _active_count(conn: AsyncConnection, user_id: int) -> int:
    """The user's unfinished jobs; the caller holds the user's lock (`ledger.lock_user`)."""
    count = await conn.execute(
        select(func.count())
        .select_from(_JOBS)
        .where(_JOBS.c.user_id == user_id, _JOBS.c.state.in_(_UNFINISHED))
    )
    return int(count.scalar_one())


async def input_keys_in_use(
    conn: AsyncConnection, keys: Iterable[str], *, excluding: Iterable[str] = ()
) -> set[str]:
    """Which of `keys` a job other than those `excluding` still points at as selfie or pose."""
    wanted = set(keys)
    if not wanted:
        return set()
    rows = await conn.execute(
        select(_JOBS.c.selfie_key, _JOBS.c.pose_key).where(
            or_(_JOBS.c.selfie_key.in_(sorted(wanted)), _JOBS.c.pose_key.in_(sorted(wanted))),
            _JOBS.c.id.not_in(list(excluding)),
        )
    )
    return {key for pair in rows for key in pair if key in wanted}


async def _guarded_update(
    conn: AsyncConnection,
    job_id: str,
    expected: Iterable[JobState],
    to: JobState,
    values: dict[str, Any],
    *,
    owner: str | None = None,
    retries: int | None = None,
) -> JobRecord | None:
    """Move the job to `to` with `values`, only if it is in one of `expected` (and, given an
    `owner`, only while that process holds its lease; given `retries`, only while its identity
    gate's retry counter has that value): the job as it now is, or None."""
    if to in FINISHED_STATES:
        values = {**values, "lease_expires_at": None}
    statement = _guarded_statement(
        tuple(sorted(s.value for s in expected)),
        tuple(values),
        owned=owner is not None,
        counted=retries is not None,
    )
    parameters = {f"set_{name}": value for name, value in values.items()}
    parameters.update(
        guard_id=job_id,
        guard_owner=owner,
        guard_retries=retries,
        set_state=to.value,
        set_updated_at=utcnow(),
    )
    row = (await conn.execute(statement, parameters)).one_or_none()
    return job_record(row) if row else None


@functools.lru_cache(maxsize=256)
def _guarded_statement(
    states: tuple[str, ...], names: tuple[str, ...], *, owned: bool, counted: bool
) -> Update:
    """The guarded UPDATE of one kind of transition, built once: what changes from one job to
    the next is bound when it runs. (Building and keying a statement for every transition cost
    about two and a half times what running it does.) The expected states are the statement's
    own values, not a list bound at each run: SQLAlchemy rewrites a bound list's `IN` into the
    SQL every time, which made the transition about 40 % dearer."""
    guards = [_JOBS.c.id == bindparam("guard_id"), _JOBS.c.state.in_([literal(s) for s in states])]
    if owned:
        # A process whose lease was taken over (it stalled past its expiry) moves nothing.
        guards.append(_JOBS.c.lease_owner == bindparam("guard_owner"))
    if counted:
        guards.append(_JOBS.c.identity_retries == bindparam("guard_retries"))
    columns = ("state", "updated_at", *names)
    return (
        update(_JOBS)
        .where(*guards)
        .values({name: bindparam(f"set_{name}") for name in columns})
        .returning(_JOBS)
    )


def job_record(row: Any) -> JobRecord:
    """A jobs row (every column) as a record; shared with the history and stats queries."""
    return JobRecord(
        id=row.id,
        user_id=row.user_id,
        community_id=row.community_id,
        operation=row.operation,
        params=dict(row.params),
        state=JobState(row.state),
        credits_reserved=row.credits_reserved,
        selfie_key=row.selfie_key,
        pose_key=row.pose_key,
        webhook_token_hash=row.webhook_token_hash,
        provider_id=row.provider_id,
        provider_outputs=tuple(row.provider_outputs or ()),
        seed=row.seed,
        eta_at=row.eta_at,
        error=row.error,
        generation_time=row.generation_time,
        attempts=row.attempts,
        created_at=row.created_at,
        submitted_at=row.submitted_at,
        completed_at=row.completed_at,
        finished_at=row.finished_at,
        style=row.style,
        user_prompt=row.user_prompt,
        deleted_at=row.deleted_at,
        inputs_expire_at=row.inputs_expire_at,
        lease_owner=row.lease_owner,
        identity_retries=row.identity_retries,
    )
