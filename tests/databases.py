"""The two databases every storage-touching test runs on: a SQLite file and a real PostgreSQL.

PostgreSQL databases are cloned from a template migrated once per session (`CREATE DATABASE …
TEMPLATE`), which costs a fraction of running the migrations for every test.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from storage.jobs import NewJob
from storage.migrate import alembic_config
from storage.records import PlatformUser

KINDS = ("sqlite", "postgresql")
TEMPLATE = "headshot_template"


def sqlite_url(path: Path) -> str:
    return f"sqlite+aiosqlite:///{path}"


def _libpq(url: str, database: str | None = None) -> str:
    """A SQLAlchemy PostgreSQL URL as psycopg's conninfo (optionally naming another database)."""
    parsed = make_url(url).set(drivername="postgresql")
    if database is not None:
        parsed = parsed.set(database=database)
    return parsed.render_as_string(hide_password=False)


def with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


class PostgresDatabases:
    """Makes and drops databases on one server for the session's tests."""

    def __init__(self, server_url: str) -> None:
        self.server_url = server_url

    def _admin(self) -> psycopg.Connection[Any]:
        return psycopg.connect(_libpq(self.server_url), autocommit=True)

    def _create(self, name: str, template: str | None = None) -> str:
        clause = f" TEMPLATE {template}" if template else ""
        with self._admin() as conn:
            conn.execute(f'CREATE DATABASE "{name}"{clause}')  # type: ignore[arg-type]
        return with_database(self.server_url, name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')  # type: ignore[arg-type]

    def empty(self) -> str:
        return self._create(f"t_{secrets.token_hex(6)}")

    def make_template(self) -> None:
        """The migrated database that `migrated` clones. Alembic runs its own event loop, so it
        runs in a thread of its own: the session may be inside a test's loop already."""
        with self._admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')  # type: ignore[arg-type]
        config = alembic_config(self._create(TEMPLATE))
        with ThreadPoolExecutor(1) as thread:
            thread.submit(command.upgrade, config, "head").result()

    def migrated(self) -> str:
        return self._create(f"t_{secrets.token_hex(6)}", template=TEMPLATE)


def _sync_url(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        parsed = parsed.set(drivername="sqlite")
    return parsed.render_as_string(hide_password=False)


@contextlib.contextmanager
def connect(url: str) -> Iterator[Any]:
    """A plain (synchronous) connection to a test database, committed on exit."""
    engine = create_engine(_sync_url(url), poolclass=NullPool)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def query(url: str, sql: str, **params: Any) -> list[tuple[Any, ...]]:
    """Rows of one SQL statement, read outside the service (a test looking in from the side).
    Dates come back as ISO text on both databases (SQLite keeps them as text)."""
    with connect(url) as conn:
        return [tuple(map(_plain, row)) for row in conn.execute(text(sql), params)]


def _plain(value: Any) -> Any:
    if isinstance(value, date) and not isinstance(value, datetime):
        return value.isoformat()
    return value


def all_rows(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every row of every table, as column -> value."""
    with connect(url) as conn:
        names = set(inspect(conn).get_table_names()) - {"alembic_version"}
        return {
            name: [dict(row._mapping) for row in conn.execute(text(f"SELECT * FROM {name}"))]
            for name in sorted(names)
        }


def execute(url: str, sql: str, **params: Any) -> None:
    with connect(url) as conn:
        conn.execute(text(sql), params)


def tables(url: str) -> set[str]:
    """The tables in a database, Alembic's own bookkeeping left out."""
    with connect(url) as conn:
        return set(inspect(conn).get_table_names()) - {"alembic_version"}


def columns(url: str, table: str) -> set[str]:
    with connect(url) as conn:
        return {column["name"] for column in inspect(conn).get_columns(table)}


def indexes(url: str, table: str) -> set[str]:
    with connect(url) as conn:
        return {str(index["name"]) for index in inspect(conn).get_indexes(table)}


def stored_bytes(url: str) -> bytes:
    """What the database holds, to search for a secret: a SQLite file as it lies on disk (its
    write-ahead log and freed pages included); every row of a PostgreSQL database, as text."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(str(parsed.database))
        data = path.read_bytes()
        for suffix in ("-wal", "-shm"):
            extra = path.with_name(path.name + suffix)
            data += extra.read_bytes() if extra.exists() else b""
        return data
    return repr(all_rows(url)).encode()


@contextlib.asynccontextmanager
async def fresh_postgres_database() -> AsyncIterator[str]:
    """An empty database of its own on TEST_POSTGRES_URL's server (the benchmarks' way in:
    `python -m tests.postgres -- python bench/….py`), dropped afterwards."""
    server = os.environ.get("TEST_POSTGRES_URL")
    if not server:
        raise SystemExit(
            "TEST_POSTGRES_URL is not set: run this as `python -m tests.postgres -- python …`"
        )
    databases = PostgresDatabases(server)
    url = databases.empty()
    try:
        yield url
    finally:
        databases.drop(url)


def new_job(
    job_id: str,
    user: int | PlatformUser,
    credits: int = 1,
    selfie: str | None = None,
    *,
    community: int | None = None,
    operation: str = "headshot",
) -> NewJob:
    """A job of `credits` images (a headshot unless `operation` says otherwise) for `user` (an
    id, or who they are on a platform), in `community` (an id) or none."""
    return NewJob(
        id=job_id,
        user=user,
        community=community,
        operation=operation,
        params={"operation": operation, "samples": credits},
        credits=credits,
        selfie_key=selfie or f"inputs/{job_id}.jpg",
        pose_key=None,
        seed=1,
    )
