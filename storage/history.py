"""A user's own jobs: their history page, looking one up by a short id, deleting one, and
forgetting the user altogether.

Deleting a job keeps its row and its ledger entries: the ledger is what counts today's use,
so a deleted job must still count, or deleting would hand credits back. What the job said
(its prompt, parameters, error) and made (its outputs, and the identity gate's measures of
them: how much each image looked like the selfie) goes.

Outputs are content-addressed in the image store, so two jobs can share one stored image,
and a re-roll may share its original's selfie: the keys handed back to be deleted are only
those no remaining row points at.

The messages chat platforms show a job's images in (`storage.posts`) are handed back by both,
their rows gone with the job, for the caller to remove from the chats.

Forgetting a user keeps one number: what they had used of today's allowance, under their
pseudonym (`storage.pseudonyms`), so that coming back the same day does not reset it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date
from typing import Any

from sqlalchemy import delete, func, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from storage import identity, ledger
from storage.database import Database
from storage.inbox import forget_inbox
from storage.interactions import forget_interactions
from storage.jobs import MIN_REF_LENGTH, id_matches, input_keys_in_use, job_record, one_match
from storage.models import (
    AuditEntry,
    Ban,
    Delivery,
    ForgottenUsage,
    IdentityCheck,
    Job,
    LedgerEntry,
    Output,
    ScopedSetting,
    User,
    utcnow,
)
from storage.posts import take_posts
from storage.records import FINISHED_STATES, ForgetReport, JobDeletion, JobRecord
from storage.waits import forget_waits

FORGOTTEN = "forgotten user"


class UserBusy(Exception):
    """The user still has unfinished jobs, so `forget` changed nothing."""

    def __init__(self, active: int) -> None:
        super().__init__(f"the user has {active} unfinished job(s)")
        self.active = active


_JOBS = Job.__table__
_OUTPUTS = Output.__table__
_CHECKS = IdentityCheck.__table__
_FORGOTTEN_USAGE = ForgottenUsage.__table__
_FINISHED = [s.value for s in FINISHED_STATES]


class HistoryRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def page(self, user_id: int, *, offset: int, limit: int) -> tuple[list[JobRecord], int]:
        """One page of the user's jobs, newest first, and how many they have in all."""
        mine = (_JOBS.c.user_id == user_id, _JOBS.c.deleted_at.is_(None))
        async with self._db.read() as conn:
            total = (
                await conn.execute(select(func.count()).select_from(_JOBS).where(*mine))
            ).scalar_one()
            rows = await conn.execute(
                select(_JOBS)
                .where(*mine)
                .order_by(_JOBS.c.created_at.desc(), _JOBS.c.id.desc())
                .offset(offset)
                .limit(limit)
            )
            return [job_record(row) for row in rows], int(total)

    async def find(self, user_id: int, ref: str) -> JobRecord | None:
        """The user's job with this id or id prefix (at least 6 characters, as shown to them).

        None when no job of theirs matches, or more than one does: another user's job is never
        found, whatever its id.
        """
        if len(ref) < MIN_REF_LENGTH:
            return None
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(_JOBS)
                .where(_JOBS.c.user_id == user_id, _JOBS.c.deleted_at.is_(None), id_matches(ref))
                .limit(2)
            )
            row = one_match(rows.all(), ref)
            return job_record(row) if row is not None else None

    async def active(self, user_id: int) -> list[JobRecord]:
        """The user's unfinished jobs, oldest first (the order they will run in)."""
        async with self._db.read() as conn:
            rows = await conn.execute(
                select(_JOBS)
                .where(_JOBS.c.user_id == user_id, _JOBS.c.state.not_in(_FINISHED))
                .order_by(_JOBS.c.created_at, _JOBS.c.id)
            )
            return [job_record(row) for row in rows]

    async def delete(self, job_id: str) -> JobDeletion | None:
        """Delete a finished job's outputs and content, keeping the row and its ledger entries.

        Returns the image-store keys to delete now and the messages that showed its images, or
        None (nothing changed) when the job is unknown, unfinished or already deleted.
        """
        async with self._db.write() as conn:
            row = (
                await conn.execute(
                    select(_JOBS.c.selfie_key, _JOBS.c.pose_key)
                    .where(
                        _JOBS.c.id == job_id,
                        _JOBS.c.state.in_(_FINISHED),
                        _JOBS.c.deleted_at.is_(None),
                    )
                    # Locked before its posts are taken: a post being noted now lands first.
                    .with_for_update()
                )
            ).one_or_none()
            if row is None:
                return None
            outputs = await _delete_outputs(conn, [job_id])
            outputs += await _delete_identity_checks(conn, [job_id])
            # Nothing is left to show; the note also names where the user asked for it.
            await _delete(conn, Delivery, Delivery.job_id == job_id)
            posts = await take_posts(conn, [job_id])
            inputs = [key for key in (row.selfie_key, row.pose_key) if key]
            now = utcnow()
            await conn.execute(
                update(_JOBS)
                .where(_JOBS.c.id == job_id)
                .values(
                    deleted_at=now,
                    updated_at=now,
                    params={},
                    user_prompt=None,
                    style=None,
                    error=None,
                    provider_outputs=None,
                    selfie_key=None,
                    pose_key=None,
                    inputs_expire_at=None,
                )
            )
            return JobDeletion(await _unreferenced(conn, outputs, inputs), posts)

    async def forget(
        self,
        user_id: int,
        *,
        platform: str,
        platform_user_id: str,
        subject: str,
        today: date,
    ) -> ForgetReport:
        """Delete everything of this user, in one transaction, and unname them in the log.

        Raises UserBusy, changing nothing, while a job of theirs is unfinished (its credits are
        not settled yet, and it would go on writing rows about them).

        What they have used of `today`'s allowance is kept as forgotten usage under `subject`
        (the caller's pseudonym for them), for `AccountRepository.user` to carry over should
        they return today; such rows of earlier days, anyone's, are dropped here.

        Their outputs (and the identity gate's measures of their images), ledger entries,
        settings at every scope, jobs (with the messages noted as showing their images,
        handed back in the report) and user row go, and so does what the chat platforms hold
        of them for a while: waits for their photo or choice, their updates not handled yet,
        their deferred interactions. Audit rows they did or that were done to them stay, as
        done by or to "forgotten user" and without details; so do rows they wrote elsewhere (a
        ban, a community setting), with the same name in place of theirs. Bans of them stay:
        keyed by a pseudonym, they name nobody and must outlast this.
        """
        name = f"{platform}:{platform_user_id}"
        async with self._db.write() as conn:
            # The row lock serialises this with a reservation on PostgreSQL (SQLite's
            # BEGIN IMMEDIATE already does), so no job can start between the checks and here.
            owner = (
                await conn.execute(
                    select(User.platform, User.platform_user_id)
                    .where(User.id == user_id)
                    .with_for_update()
                )
            ).one_or_none()
            if owner is not None and tuple(owner) != (platform, platform_user_id):
                raise ValueError(f"user {user_id} is not {platform} user {platform_user_id}")
            active = (
                await conn.execute(
                    select(func.count())
                    .select_from(_JOBS)
                    .where(_JOBS.c.user_id == user_id, _JOBS.c.state.not_in(_FINISHED))
                )
            ).scalar_one()
            if active:
                raise UserBusy(int(active))
            await conn.execute(delete(_FORGOTTEN_USAGE).where(_FORGOTTEN_USAGE.c.day < today))
            used = await ledger.daily_used(conn, user_id, today)
            if used > 0:
                await conn.execute(
                    insert(_FORGOTTEN_USAGE).values(
                        subject=subject, day=today, credits=used, created_at=utcnow()
                    )
                )
            jobs = (
                await conn.execute(
                    select(_JOBS.c.id, _JOBS.c.selfie_key, _JOBS.c.pose_key)
                    .where(_JOBS.c.user_id == user_id)
                    # Locked before their posts are taken: a post being noted now lands first.
                    .with_for_update()
                )
            ).all()
            job_ids = [job.id for job in jobs]
            outputs = await _delete_outputs(conn, job_ids)
            candidates = await _delete_identity_checks(conn, job_ids)
            ledger_entries = await _delete(
                conn,
                LedgerEntry,
                or_(LedgerEntry.user_id == user_id, LedgerEntry.job_id.in_(job_ids)),
            )
            settings = await _delete(conn, ScopedSetting, ScopedSetting.user_id == user_id)
            await _delete(conn, Delivery, Delivery.job_id.in_(job_ids))
            posts = await take_posts(conn, job_ids)
            deleted_jobs = await _delete(conn, Job, Job.user_id == user_id)
            await _delete(conn, User, User.id == user_id)
            await forget_waits(conn, platform, platform_user_id)
            await forget_inbox(conn, platform, platform_user_id)
            await forget_interactions(conn, platform, platform_user_id)
            await _unname(conn, name)
            inputs = [key for job in jobs for key in (job.selfie_key, job.pose_key) if key]
            store_keys = await _unreferenced(conn, outputs + candidates, inputs)
        return ForgetReport(
            jobs=deleted_jobs,
            outputs=len(outputs),
            ledger_entries=ledger_entries,
            settings=settings,
            store_keys=store_keys,
            posts=posts,
        )


async def _delete_outputs(conn: AsyncConnection, job_ids: list[str]) -> list[str]:
    """Delete these jobs' output rows; their content keys, one per row."""
    if not job_ids:
        return []
    deleted = await conn.execute(
        delete(_OUTPUTS).where(_OUTPUTS.c.job_id.in_(job_ids)).returning(_OUTPUTS.c.content_key)
    )
    return list(deleted.scalars())


async def _delete_identity_checks(conn: AsyncConnection, job_ids: list[str]) -> list[str]:
    """Delete the identity gate's measures of these jobs' images; the image keys any of them
    still held (a candidate image is let go of when its job ends, so normally none).

    Deleted here, not left to the foreign key's cascade: a measure of someone's face is
    theirs, and must go whether or not the database enforces the cascade.
    """
    if not job_ids:
        return []
    deleted = await conn.execute(
        delete(_CHECKS).where(_CHECKS.c.job_id.in_(job_ids)).returning(_CHECKS.c.content_key)
    )
    return [key for key in deleted.scalars() if key]


async def _delete(conn: AsyncConnection, model: Any, where: Any) -> int:
    result = await conn.execute(delete(model).where(where))
    return int(result.rowcount)


async def _unreferenced(
    conn: AsyncConnection, outputs: Iterable[str], inputs: Iterable[str]
) -> tuple[str, ...]:
    """Of these just-released keys, those no remaining output, candidate image (an identity
    check's) or job row points at."""
    output_keys = sorted(set(outputs))
    input_keys = sorted(set(inputs) - set(output_keys))
    shared = await identity.in_use(conn, output_keys)
    shared |= await input_keys_in_use(conn, input_keys)
    return tuple(key for key in output_keys + input_keys if key not in shared)


async def _unname(conn: AsyncConnection, name: str) -> None:
    """Put "forgotten user" wherever a remaining row names `name` as who did or suffered it."""
    audit = AuditEntry.__table__
    await conn.execute(
        update(audit).where(audit.c.actor == name).values(actor=FORGOTTEN, details=None)
    )
    await conn.execute(
        update(audit).where(audit.c.target == name).values(target=FORGOTTEN, details=None)
    )
    # Details are free-form (a grant's note, say): drop any that still spell the name out.
    # The log is short, moderators' actions only, so reading it whole here is cheap.
    rows = await conn.execute(
        select(audit.c.id, audit.c.details).where(audit.c.details.is_not(None))
    )
    naming = [
        row.id
        for row in rows
        if row.details is not None and name in json.dumps(row.details, ensure_ascii=False)
    ]
    if naming:
        await conn.execute(update(audit).where(audit.c.id.in_(naming)).values(details=None))
    await conn.execute(
        update(ScopedSetting).where(ScopedSetting.updated_by == name).values(updated_by=FORGOTTEN)
    )
    await conn.execute(update(Ban).where(Ban.banned_by == name).values(banned_by=FORGOTTEN))
