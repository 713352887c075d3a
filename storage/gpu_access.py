"""The GPU workers' database role: it may touch the queue, the results and the worker registry,
and nothing else (not the users, the jobs, the ledger…): a worker's machine holds its password,
and such a machine may stand anywhere.

Procrastinate's functions run with their caller's rights (none is SECURITY DEFINER) and every
role may execute them, so the grants on its tables and sequences are what the worker needs.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from storage.gpu_queue import psycopg_params

if TYPE_CHECKING:
    import psycopg

ROLE_NAME = re.compile(r"[A-Za-z0-9_]{1,63}")
WORKER_TABLES = {
    "gpu_workers": ("SELECT", "INSERT", "UPDATE", "DELETE"),
    "gpu_results": ("SELECT", "INSERT"),
    "alembic_version": ("SELECT",),
}
_PROCRASTINATE_RELATIONS = """
    SELECT c.relname, c.relkind FROM pg_class c
    WHERE c.relnamespace = current_schema()::regnamespace
        AND c.relkind IN ('r', 'S') AND c.relname LIKE 'procrastinate\\_%'
    ORDER BY c.relname
"""


def check_role_name(role: str) -> None:
    if not ROLE_NAME.fullmatch(role):
        raise ValueError(
            "the GPU workers' role name must be 1 to 63 letters, digits or underscores"
        )


def worker_url(owner_url: str, role: str, password: str) -> str:
    """The owner's database URL, as the worker role."""
    check_role_name(role)
    url = make_url(owner_url).set(username=role, password=password)
    return url.render_as_string(hide_password=False)


async def grant_worker_role(owner_url: str, role: str, password: str) -> None:
    """Create the workers' role (or set its password) and grant it what a worker needs, on the
    migrated database of `owner_url`. Running it again changes nothing but the password."""
    check_role_name(role)
    if not password:
        raise ValueError("the GPU workers' role needs a password")
    import psycopg

    params = psycopg_params(owner_url)
    if role == params.get("user"):
        raise ValueError("the GPU workers' role must not be the database owner's own role")
    async with await psycopg.AsyncConnection.connect(**params) as conn, conn.transaction():
        relations = await (await conn.execute(_PROCRASTINATE_RELATIONS)).fetchall()
        missing = await _missing_tables(conn)
        if missing or not relations:
            raise RuntimeError(
                "the database has no GPU queue yet: run `headshot-bot migrate` first"
            )
        await _create_or_update_role(conn, role, password)
        await _grant(conn, role, relations)


async def _missing_tables(conn: psycopg.AsyncConnection) -> list[str]:
    missing = []
    for table in WORKER_TABLES:
        cursor = await conn.execute("SELECT to_regclass(%s)", (table,))
        row = await cursor.fetchone()
        if row is None or row[0] is None:
            missing.append(table)
    return missing


async def _create_or_update_role(conn: psycopg.AsyncConnection, role: str, password: str) -> None:
    from psycopg import sql

    cursor = await conn.execute(
        "SELECT rolsuper OR rolcreaterole OR rolcreatedb FROM pg_roles WHERE rolname = %s",
        (role,),
    )
    existing = await cursor.fetchone()
    if existing is not None and existing[0]:
        raise ValueError(f"the role {role} may create roles or databases: not a GPU workers' role")
    verb = "ALTER" if existing is not None else "CREATE"
    await conn.execute(
        sql.SQL("{} ROLE {} LOGIN PASSWORD {}").format(
            sql.SQL(verb), sql.Identifier(role), sql.Literal(password)
        )
    )


async def _grant(
    conn: psycopg.AsyncConnection, role: str, relations: list[tuple[str, str]]
) -> None:
    from psycopg import sql

    grantee = sql.Identifier(role)
    await conn.execute(
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(conn.info.dbname), grantee
        )
    )
    await conn.execute(
        sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(
            sql.Identifier(await _current_schema(conn)), grantee
        )
    )
    for name, kind in relations:
        # A sequence's USAGE is nextval (a worker's row, an event): never setval.
        rights = "SELECT, INSERT, UPDATE, DELETE" if kind == "r" else "USAGE"
        what = "TABLE" if kind == "r" else "SEQUENCE"
        await conn.execute(
            sql.SQL("GRANT {} ON {} {} TO {}").format(
                sql.SQL(rights), sql.SQL(what), sql.Identifier(name), grantee
            )
        )
    for table, table_rights in WORKER_TABLES.items():
        await conn.execute(
            sql.SQL("GRANT {} ON TABLE {} TO {}").format(
                sql.SQL(", ").join(sql.SQL(right) for right in table_rights),
                sql.Identifier(table),
                grantee,
            )
        )


async def _current_schema(conn: psycopg.AsyncConnection) -> str:
    row = await (await conn.execute("SELECT current_schema()")).fetchone()
    assert row is not None and row[0] is not None
    return str(row[0])
