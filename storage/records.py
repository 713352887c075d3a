"""Plain, immutable records that storage hands to the rest of the program."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Any


class JobState(StrEnum):
    QUEUED = "queued"
    SUBMITTED = "submitted"
    PROCESSING = "processing"
    REHOSTING = "rehosting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


FINISHED_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class Pool(StrEnum):
    """Where a credit comes from: today's allowance, a grant, or nowhere (the operator)."""

    DAILY = "daily"
    GRANT = "grant"
    UNMETERED = "unmetered"


class LedgerKind(StrEnum):
    GRANT = "grant"
    RESERVE = "reserve"
    COMMIT = "commit"
    RELEASE = "release"
    # A moderator gives back what a succeeded job cost: pool GRANT, names the job, once per job.
    REFUND = "refund"
    # Today's use a user had when they asked to be forgotten, put back when they return: pool
    # DAILY, the day it was used, names no job. It counts against that day's allowance only.
    CARRYOVER = "carryover"


@dataclass(frozen=True)
class PlatformUser:
    """A person as their chat platform names them. A transaction that needs their user row
    finds it, or makes it on first sight (`storage.accounts.user_id_in`)."""

    platform: str
    platform_user_id: str


@dataclass(frozen=True)
class PlatformCommunity:
    """A community (a Discord server, a Telegram group) as its platform names it; found or made
    by the transaction that needs it (`storage.accounts.community_id_in`)."""

    platform: str
    platform_community_id: str


@dataclass(frozen=True)
class UserRecord:
    id: int
    platform: str
    platform_user_id: str


@dataclass(frozen=True)
class JobRecord:
    id: str
    user_id: int
    community_id: int | None
    operation: str
    params: dict[str, Any]
    state: JobState
    credits_reserved: int
    selfie_key: str | None
    pose_key: str | None
    webhook_token_hash: str | None
    provider_id: str | None
    provider_outputs: tuple[str, ...]
    seed: int | None
    eta_at: datetime | None
    error: str | None
    generation_time: float | None
    attempts: int
    created_at: datetime
    submitted_at: datetime | None
    completed_at: datetime | None
    finished_at: datetime | None
    # Appended with defaults so that records built before the command layer keep working.
    style: str | None = None
    user_prompt: str | None = None
    deleted_at: datetime | None = None
    inputs_expire_at: datetime | None = None
    lease_owner: str | None = None
    # New provider attempts the identity gate asked for (an output did not look like the selfie).
    identity_retries: int = 0


@dataclass(frozen=True)
class GeneratorAnswer:
    """A provider attempt's finished answer, written with its job's end
    (`JobRepository.succeed`) whether or not the job was moved to rehosting with it first."""

    provider_id: str | None
    outputs: tuple[str, ...]
    completed_at: datetime


@dataclass(frozen=True)
class OutputRecord:
    job_id: str
    position: int
    content_key: str
    public_token: str
    content_type: str
    width: int
    height: int
    size_bytes: int
    # The identity gate's measure: dlib's distance from the selfie's face (lower is closer;
    # None: the gate was off, or there was no face to measure) and whether it passed.
    identity_distance: float | None = None
    identity_passed: bool | None = None


@dataclass(frozen=True)
class Allowance:
    """What a user may still spend: today's allowance left plus granted credits."""

    daily_left: int
    granted: int

    @property
    def total(self) -> int:
        return self.daily_left + self.granted


@dataclass(frozen=True)
class JobListing:
    """A job with the platform id of its user: what a moderator's listing shows."""

    job: JobRecord
    platform_user_id: str


@dataclass(frozen=True)
class PersonsSetting:
    """One setting's values at the scopes a person choosing for themselves and their place
    (their community, then everyone) have: None where it is not set."""

    own: Any = None
    community: Any = None
    everyone: Any = None


@dataclass(frozen=True)
class SettingRecord:
    """One scoped setting. None means "any": (None, None) is global, (c, None) a community's
    default, (None, u) a user's everywhere, (c, u) a user's in one community."""

    community_id: int | None
    user_id: int | None
    key: str
    value: Any


@dataclass(frozen=True)
class BanRecord:
    community_id: int | None  # None: banned everywhere
    reason: str | None
    banned_by: str
    at: datetime


@dataclass(frozen=True)
class AuditNote:
    """What an action writes to the audit log, in the same transaction as the action itself."""

    actor: str
    action: str
    target: str | None = None
    community_id: int | None = None
    details: dict[str, Any] | None = None


@dataclass(frozen=True)
class AuditRecord:
    at: datetime
    actor: str
    action: str
    target: str | None
    community_id: int | None
    details: dict[str, Any] | None


@dataclass(frozen=True)
class ForgetReport:
    """What `forget` removed. `store_keys`: image-store keys the caller must now delete (outputs
    no remaining output references, and inputs no remaining job references)."""

    jobs: int
    outputs: int
    ledger_entries: int
    settings: int
    store_keys: tuple[str, ...]
    # The messages chat platforms show the jobs' images in: the caller removes them.
    posts: tuple[Post, ...] = ()


@dataclass(frozen=True)
class Post:
    """A message a chat platform shows a job's images in, by the platform's own ids."""

    platform: str
    chat: str
    message: str
    kind: str = ""


@dataclass(frozen=True)
class JobDeletion:
    """What deleting one job released: image-store keys to delete now (as `ForgetReport`'s),
    and the messages that showed its images, to remove."""

    store_keys: tuple[str, ...]
    posts: tuple[Post, ...] = ()


@dataclass(frozen=True)
class JobStats:
    jobs: int
    succeeded: int
    failed: int
    credits_used: int  # committed minus refunded
    top_users: tuple[tuple[str, int], ...]  # (platform_user_id, jobs), most first, at most 5
    median_generation_seconds: float | None
    # The identity gate, over the same jobs: the new provider attempts it asked for (each one
    # paid for by the operator), its measures per operation and backend, and the delivered
    # images that failed it (their credits refunded).
    identity_retries: int = 0
    identity: tuple[IdentityFigures, ...] = ()
    delivered_unlike: int = 0

    @property
    def identity_checks(self) -> int:
        return sum(figures.checks for figures in self.identity)

    @property
    def identity_passed(self) -> int:
        return sum(figures.passed for figures in self.identity)


@dataclass(frozen=True)
class IdentityFigures:
    """The identity gate's measures of one operation on one backend: images measured against
    their selfie, and how many of them looked like it."""

    operation: str
    backend: str
    checks: int
    passed: int


@dataclass(frozen=True)
class DayFigures:
    """One UTC day of what `JobStats` counts: the jobs created that day by outcome, the credits
    they used, and how long the succeeded ones took to generate (None: none had a time)."""

    day: date
    succeeded: int = 0
    failed: int = 0
    other: int = 0  # cancelled, or not finished yet
    credits_used: int = 0  # committed minus refunded
    median_generation_seconds: float | None = None
    p90_generation_seconds: float | None = None

    @property
    def jobs(self) -> int:
        return self.succeeded + self.failed + self.other


@dataclass(frozen=True)
class PendingDelivery:
    """A job whose result a chat adapter has yet to show, where (the adapter's address), and in
    which language (a shipped catalogue's name; None: asked before languages were kept)."""

    job_id: str
    target: dict[str, Any]
    language: str | None = None
