"""Job leases: which process drives a job, and until when.

Expiry is judged by the database's clock, never a replica's: on PostgreSQL that is `now()`
on the server. SQLite is a file on the one machine that runs the bot, whose clock it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import func
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.models import utcnow


@dataclass(frozen=True)
class Lease:
    """A process's claim on what it drives: who, and for how long from each renewal."""

    owner: str
    seconds: float


def database_now(conn: AsyncConnection) -> Any:
    """The database's time, as a value to compare or store in the connection's dialect."""
    return func.now() if conn.dialect.name == "postgresql" else utcnow()


def lease_until(conn: AsyncConnection, seconds: float) -> Any:
    return database_now(conn) + timedelta(seconds=seconds)
