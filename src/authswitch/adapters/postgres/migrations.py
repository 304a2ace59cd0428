"""Versioned, forward-only SQL migrations, recorded in ``schema_migrations``.

Files are ``migrations/NNNN_name.sql``; each is applied in its own transaction, in order,
under a transaction-scoped advisory lock so that several processes starting together apply
each once. The lock lives and dies with the transaction, so this works the same directly
against Postgres and through pgbouncer in transaction pooling mode (where a session lock
would stay behind on a server connection other clients then use). A large migration (0007
moves every row of the journal, holds and outbox) is better run directly against Postgres,
where no pgbouncer timeout applies to it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from authswitch.adapters.postgres.pool import Connection, create_pool

__all__ = ["Migration", "applied_versions", "discover", "migrate", "migrate_database"]

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_LOCK_KEY = 0x61757468  # "auth": the advisory lock that serialises migrations


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


def discover() -> list[Migration]:
    folder = resources.files("authswitch.adapters.postgres").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text()))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    # Numbers are unique and increasing; a gap is allowed, so that work in parallel branches
    # can reserve numbers (a migration merged later with a lower number is applied when it
    # arrives: each is applied once, in number order among those not yet applied).
    assert len(set(versions)) == len(versions), f"migration numbers must be unique: {versions}"
    assert versions, "no migrations found"
    assert versions[0] == 1, f"migrations start at 0001: {versions}"
    return found


async def applied_versions(conn: Connection) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def migrate_database(dsn: str, *, pgbouncer: bool, progress: Any = None) -> list[Migration]:
    """Apply every migration not yet applied to the database at ``dsn``, over a connection
    of its own (a long statement timeout: a migration may rewrite a large table)."""
    pool = await create_pool(
        dsn, min_size=1, max_size=1, statement_timeout_ms=600_000, pgbouncer=pgbouncer
    )
    try:
        async with pool.acquire() as conn:
            return await migrate(conn, progress=progress)
    finally:
        await pool.close()


async def migrate(conn: Connection, *, progress: Any = None) -> list[Migration]:
    """Apply every migration not yet applied; returns those applied now."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version     integer PRIMARY KEY,
                   name        text NOT NULL,
                   applied_at  timestamptz NOT NULL DEFAULT now())"""
        )
    applied = await applied_versions(conn)
    done: list[Migration] = []
    for migration in discover():
        if migration.version in applied:
            continue
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            # Read after the lock: another process may have applied it meanwhile.
            if await conn.fetchval(
                "SELECT true FROM schema_migrations WHERE version = $1", migration.version
            ):
                continue
            if progress is not None:
                progress(f"applying migration {migration.version:04d}_{migration.name}")
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
        done.append(migration)
    return done
