"""The Postgres and Redis the tests run against: the ones named by
``AUTHSWITCH_TEST_POSTGRES_DSN`` / ``AUTHSWITCH_TEST_REDIS_URL``, or embedded ones started
here. Each test session gets its own database and its own Redis key prefix, so sessions on
shared servers never see each other's data."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis

from authswitch.embedded import EmbeddedPostgres, EmbeddedRedis


async def decisions_stored(dsn: str, message_ids: Iterable[str]) -> int:
    """How many of ``message_ids`` have a decision in the database at ``dsn``."""
    conn = await asyncpg.connect(dsn)
    try:
        found = await conn.fetchval(
            "SELECT count(*) FROM decisions WHERE message_id = ANY($1::text[])",
            list(message_ids),
        )
    finally:
        await conn.close()
    return int(found)


@dataclass(frozen=True)
class Stores:
    postgres_dsn: str
    redis_url: str
    redis_prefix: str
    embedded: bool
    # The session's scratch directory (the embedded servers' data); removed at its end.
    scratch_dir: Path


def _with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@contextlib.asynccontextmanager
async def test_database(server_dsn: str) -> AsyncIterator[str]:
    """A fresh database on the server of ``server_dsn``, dropped afterwards."""
    name = f"authswitch_test_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(server_dsn, name)
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def open_stores() -> AsyncIterator[Stores]:
    """The session's stores. The scratch directory (the embedded servers' data, tens of MB)
    is removed at the end, whether the session passed, failed or was interrupted."""
    pg_dsn = os.environ.get("AUTHSWITCH_TEST_POSTGRES_DSN", "")
    redis_url = os.environ.get("AUTHSWITCH_TEST_REDIS_URL", "")
    tmp = Path(tempfile.mkdtemp(prefix="authswitch-test-"))
    embedded_pg: EmbeddedPostgres | None = None
    embedded_redis: EmbeddedRedis | None = None
    try:
        if not pg_dsn:
            embedded_pg = EmbeddedPostgres(tmp)
            pg_dsn = embedded_pg.start()
        if not redis_url:
            embedded_redis = EmbeddedRedis(tmp)
            redis_url = embedded_redis.start()
        prefix = f"t{secrets.token_hex(3)}"
        try:
            async with test_database(pg_dsn) as dsn:
                yield Stores(dsn, redis_url, prefix, embedded_pg is not None, tmp)
        finally:
            client = aioredis.Redis.from_url(redis_url)
            try:
                async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
                    await client.delete(key)
            finally:
                await client.aclose()
    finally:
        try:
            if embedded_redis is not None:
                embedded_redis.stop()
        finally:
            if embedded_pg is not None:
                embedded_pg.stop()
            shutil.rmtree(tmp, ignore_errors=True)
