"""The tables. Only `storage/` and `migrations/` import this module."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC, always hands back an aware datetime (SQLite keeps no time zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


class User(Base):
    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("platform", "platform_user_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    platform_user_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Community(Base):
    __tablename__ = "communities"
    __table_args__ = (UniqueConstraint("platform", "platform_community_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    platform_community_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_user_created", "user_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    community_id: Mapped[int | None] = mapped_column(
        ForeignKey("communities.id", ondelete="SET NULL")
    )
    operation: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), index=True)
    credits_reserved: Mapped[int] = mapped_column(Integer)
    selfie_key: Mapped[str | None] = mapped_column(String(255))
    pose_key: Mapped[str | None] = mapped_column(String(255))
    webhook_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    provider_id: Mapped[str | None] = mapped_column(String(64))
    provider_outputs: Mapped[list[str] | None] = mapped_column(JSON)
    # Seeds go up to 2**32 - 1: a BIGINT on PostgreSQL (SQLite's INTEGER holds 64 bits already).
    seed: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    eta_at: Mapped[datetime | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    generation_time: Mapped[float | None] = mapped_column(Float)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    submitted_at: Mapped[datetime | None] = mapped_column()
    completed_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    # The command layer (migration 0002): what the user asked for, in words, and the life of a
    # job after it ends: its selfie may be kept a while for re-rolls, and the user may delete it.
    style: Mapped[str | None] = mapped_column(String(32))
    user_prompt: Mapped[str | None] = mapped_column(Text)
    deleted_at: Mapped[datetime | None] = mapped_column()
    inputs_expire_at: Mapped[datetime | None] = mapped_column(index=True)
    # The cluster (migration 0005): the process driving the job, until when (by the database's
    # clock); renewed while it drives it, taken over by another once it has expired.
    lease_owner: Mapped[str | None] = mapped_column(String(64), index=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    # The request that made the job (migration 0007): a chat platform's update or interaction,
    # so that handling one twice (its first handler died) finds this job instead of a new one.
    request_key: Mapped[str | None] = mapped_column(String(128), index=True, unique=True)
    # The provider's queue (migration 0006): the job's place in the fair line, given by a
    # dispatch pass, and when a pass gave it a provider slot.
    queue_round: Mapped[int | None] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), index=True
    )
    queue_slot: Mapped[int | None] = mapped_column(Integer)
    queue_community: Mapped[int | None] = mapped_column(Integer)  # what the slot was counted for
    queue_seq: Mapped[int | None] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    dispatched_at: Mapped[datetime | None] = mapped_column()
    # The identity gate (migration 0011): how many new provider attempts it asked for because
    # an output did not look like the selfie. Each one is a retry the operator pays for.
    identity_retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class DispatchState(Base):
    """The fair line's own state: one row, locked by every dispatch pass."""

    __tablename__ = "dispatch_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    current_round: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    next_seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))


class Output(Base):
    __tablename__ = "outputs"
    __table_args__ = (UniqueConstraint("job_id", "position"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    content_key: Mapped[str] = mapped_column(String(255), index=True)
    public_token: Mapped[str] = mapped_column(String(64), unique=True)
    content_type: Mapped[str] = mapped_column(String(32))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The identity gate (migration 0011): dlib's distance from the selfie's face (lower is
    # closer; None: the gate was off, or no face to measure), and whether it passed.
    identity_distance: Mapped[float | None] = mapped_column(Float)
    identity_passed: Mapped[bool | None] = mapped_column(Boolean)


class IdentityCheck(Base):
    """One generated image measured against its job's selfie by the identity gate.

    While the job runs, a row also holds its image (`content_key` and its description): a
    candidate the job's end may deliver. When the job ends, the delivered ones become outputs
    and every row lets go of its image; the measure stays, for the statistics, until the job
    is deleted or its user forgotten. No embedding is ever stored.
    """

    __tablename__ = "identity_checks"
    __table_args__ = (UniqueConstraint("job_id", "attempt", "slot"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)  # 0: the first provider attempt
    slot: Mapped[int] = mapped_column(Integer)  # which of the job's images it would be
    operation: Mapped[str] = mapped_column(String(32))
    backend: Mapped[str] = mapped_column(String(32))
    distance: Mapped[float | None] = mapped_column(Float)  # None: no face in the image
    passed: Mapped[bool | None] = mapped_column(Boolean)  # None: nothing could be judged
    seconds: Mapped[float] = mapped_column(Float)  # the check's own time
    content_key: Mapped[str | None] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(32))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    size_bytes: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class LedgerEntry(Base):
    """Append-only. A reservation is settled by at most one commit and one release per pool."""

    __tablename__ = "credit_ledger"
    __table_args__ = (
        UniqueConstraint("job_id", "kind", "pool"),
        Index("ix_ledger_user_pool_day", "user_id", "pool", "day"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    pool: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(Integer)
    day: Mapped[date | None] = mapped_column(Date)
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    community_id: Mapped[int | None] = mapped_column(
        ForeignKey("communities.id", ondelete="CASCADE"), index=True
    )
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(128))
    details: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class ScopedSetting(Base):
    """A setting for a scope, where NULL means "any": (NULL, NULL) global, (c, NULL) a
    community's, (NULL, u) a user's everywhere, (c, u) a user's in one community.

    NULLs are never equal to each other, so a unique constraint could not keep one row per
    scope and key; `storage.settings` does that inside its write transaction instead.
    """

    __tablename__ = "scoped_settings"
    __table_args__ = (Index("ix_scoped_settings_scope", "community_id", "user_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    community_id: Mapped[int | None] = mapped_column(
        ForeignKey("communities.id", ondelete="CASCADE")
    )
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(64))
    value: Mapped[Any] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_by: Mapped[str] = mapped_column(String(128))


class Ban(Base):
    """A ban, keyed by `storage.pseudonyms.Pseudonyms.subject` (a keyed hash of the platform
    id), not by the user row: a user's `forget` deletes that row, and must not lift the ban."""

    __tablename__ = "bans"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(64), index=True)
    community_id: Mapped[int | None] = mapped_column(
        ForeignKey("communities.id", ondelete="CASCADE")
    )  # NULL: banned everywhere
    reason: Mapped[str | None] = mapped_column(Text)
    banned_by: Mapped[str] = mapped_column(String(128))
    at: Mapped[datetime] = mapped_column(default=utcnow)


class ForgottenUsage(Base):
    """What a user had used of one day's allowance when they were forgotten, keyed by their
    pseudonym: if they come back that day, it moves into their new ledger (`CARRYOVER`), so
    forgetting cannot reset the allowance. Rows of past days are useless and get dropped."""

    __tablename__ = "forgotten_usage"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject: Mapped[str] = mapped_column(String(64), index=True)
    day: Mapped[date] = mapped_column(Date)
    credits: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Delivery(Base):
    """Where a chat adapter is to show a job's result, kept until it has been shown, so that a
    restart loses no result. `target` is the adapter's own address for it (a channel, a message,
    a user), never a token."""

    __tablename__ = "deliveries"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    platform: Mapped[str] = mapped_column(String(32), index=True)
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # The process showing the result, until when (migration 0005): after a crash, one other
    # process takes the delivery over, so a result is posted by one process only.
    lease_owner: Mapped[str | None] = mapped_column(String(64), index=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column()
    # The process that last took the result to show, just before posting it (migration 0008).
    show_owner: Mapped[str | None] = mapped_column(String(64))
    # The language its texts are written in, the asker's (migration 0012): a restart or another
    # replica answers in the same one.
    language: Mapped[str | None] = mapped_column(String(16))


class InstanceFact(Base):
    """A fact every process on this database must agree on, written by the first to start: the
    pseudonym key's check value (an HMAC of a fixed text under the key, never the key)."""

    __tablename__ = "instance_facts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Confirmation(Base):
    """A one-time confirmation code for a destructive command, until it is used or expires:
    the code's hash and its owner's pseudonym, never either in clear."""

    __tablename__ = "confirmations"

    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    expires_at: Mapped[datetime] = mapped_column(index=True)


class ChatWait(Base):
    """What a chat adapter waits for from someone (a photo, a choice on a keyboard), until it
    comes or `expires_at`. `request` is the adapter's own note of the command that waits (its
    words, the messages involved). Taken by the update that brings what was missing, under its
    request key (`taken_by`); the lease is that of the process announcing the expiry."""

    __tablename__ = "chat_waits"
    __table_args__ = (Index("ix_chat_waits_person", "platform", "person", "chat"),)

    token: Mapped[str] = mapped_column(String(32), primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    chat: Mapped[str] = mapped_column(String(64))
    person: Mapped[str] = mapped_column(String(64))
    for_photo: Mapped[bool] = mapped_column(Boolean)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    taken_by: Mapped[str | None] = mapped_column(String(128), index=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column()


class InboxUpdate(Base):
    """An update a chat platform handed over and was told we have, until it has been handled:
    the process handling it holds its lease, and another takes it over if that one dies."""

    __tablename__ = "chat_inbox"
    __table_args__ = (
        Index("ix_chat_inbox_source", "platform", "bot"),
        Index("ix_chat_inbox_person", "platform", "person"),
    )

    # "<platform>:<bot>:<update id>": also the request key of a job the update makes.
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    bot: Mapped[str] = mapped_column(String(32))
    person: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    attempts: Mapped[int] = mapped_column(Integer)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column()


class DeferredInteraction(Base):
    """An interaction answered with "thinking…" and not finished yet, kept so that if its
    process dies another can end it. The interaction's token is kept sealed (encrypted under a
    key derived from the pseudonym key), and only until it expires."""

    __tablename__ = "deferred_interactions"
    __table_args__ = (Index("ix_deferred_interactions_person", "platform", "person"),)

    # "<platform>:<interaction id>": also the request key of a job the interaction makes.
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    platform: Mapped[str] = mapped_column(String(32))
    person: Mapped[str] = mapped_column(String(64))
    application_id: Mapped[str] = mapped_column(String(32))
    message_id: Mapped[str | None] = mapped_column(String(32))
    sealed_token: Mapped[str] = mapped_column(Text)
    expires_at: Mapped[datetime] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_expires_at: Mapped[datetime | None] = mapped_column()


class Post(Base):
    """A message a chat platform shows a job's images in (a result, an album item, a result
    shown again), kept as long as the job, so that deleting the job can remove the message.
    `chat` and `message` are the platform's ids; `kind` is the adapter's note of what the
    message shows (Telegram replaces a photo it may no longer delete with another photo)."""

    __tablename__ = "posts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    platform: Mapped[str] = mapped_column(String(32))
    chat: Mapped[str] = mapped_column(String(64))
    message: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    posted_at: Mapped[datetime] = mapped_column(default=utcnow)


class GpuWorker(Base):
    """A GPU worker of the fleet (`headshot-bot gpu-worker`), as it last reported itself in its
    heartbeat: the replicas count the capacity of those heard from recently, and /admin workers
    shows them. Times are the database's clock."""

    __tablename__ = "gpu_workers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    device: Mapped[str] = mapped_column(String(64))
    operations: Mapped[str] = mapped_column(Text)  # comma-separated
    capacity: Mapped[int] = mapped_column(Integer)
    draining: Mapped[bool] = mapped_column(Boolean)
    started_at: Mapped[datetime] = mapped_column()
    heartbeat_at: Mapped[datetime] = mapped_column()
    jobs_done: Mapped[int] = mapped_column(Integer)
    jobs_failed: Mapped[int] = mapped_column(Integer)
    seconds_per_image: Mapped[float | None] = mapped_column(Float)


class GpuResult(Base):
    """What a GPU worker made of one queue job (a Procrastinate job id; the queue keeps no
    results): its images are in the image store already. Written once, with a NOTIFY on
    `gpu_results`, and dropped some time after the replica has read it."""

    __tablename__ = "gpu_results"

    queue_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=False
    )
    job_id: Mapped[str] = mapped_column(String(32))  # no foreign key: the job may be gone
    ok: Mapped[bool] = mapped_column(Boolean)
    refused: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text)
    images: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    seconds: Mapped[float | None] = mapped_column(Float)
    worker_id: Mapped[str | None] = mapped_column(String(32))
    finished_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
