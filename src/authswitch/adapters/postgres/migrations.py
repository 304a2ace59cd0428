"""Versioned, forward-only SQL migrations, recorded in ``schema_migrations``.

Files are ``migrations/NNNN_name.sql``; each is applied in its own transaction, in order,
under an advisory lock so that several processes starting together apply each once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

from authswitch.adapters.postgres.pool import Connection

__all__ = ["Migration", "applied_versions", "discover", "migrate"]

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
    assert versions == list(range(1, len(found) + 1)), f"migration numbers must be 1..n: {versions}"
    return found


async def applied_versions(conn: Connection) -> set[int]:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return set()
    return {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}


async def migrate(conn: Connection, *, progress: Any = None) -> list[Migration]:
    """Apply every migration not yet applied; returns those applied now."""
    done: list[Migration] = []
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version     integer PRIMARY KEY,
                   name        text NOT NULL,
                   applied_at  timestamptz NOT NULL DEFAULT now())"""
        )
        applied = await applied_versions(conn)
        for migration in discover():
            if migration.version in applied:
                continue
            if progress is not None:
                progress(f"applying migration {migration.version:04d}_{migration.name}")
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            done.append(migration)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
    return done
