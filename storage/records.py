"""Plain, immutable records that storage hands to the rest of the program."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
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


@dataclass(frozen=True)
class Allowance:
    """What a user may still spend: today's allowance left plus granted credits."""

    daily_left: int
    granted: int

    @property
    def total(self) -> int:
        return self.daily_left + self.granted
