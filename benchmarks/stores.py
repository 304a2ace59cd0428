"""The Postgres and Redis the benchmark runs on: a fresh database per scenario, a unique
Redis key prefix, and the CPU time of the store processes.

Postgres CPU is the whole cluster's (the postmaster, every backend, the WAL writer,
checkpointer, autovacuum...; backends that exited are in the postmaster's reaped time),
less the processes working for *other* databases during the window (client backends and
autovacuum workers of another test run on the same server, say), which are reported apart.
Redis CPU is its process's.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import redis.asyncio as aioredis

from benchmarks.system import children_of, proc_times

__all__ = [
    "PostgresCluster",
    "PostgresSample",
    "delete_prefix",
    "fresh_database",
    "redis_pid",
    "with_database",
]


def with_database(dsn: str, database: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path="/" + database))


@contextlib.asynccontextmanager
async def fresh_database(server_dsn: str, label: str) -> AsyncIterator[tuple[str, str]]:
    """A new database on the server of ``server_dsn``, dropped afterwards; yields its DSN
    and name."""
    name = f"bench_{label}_{secrets.token_hex(3)}"
    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(server_dsn, name), name
    finally:
        admin = await asyncpg.connect(server_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def delete_prefix(redis_url: str, prefix: str) -> int:
    """Delete every key under ``prefix:``; returns how many."""
    client = aioredis.Redis.from_url(redis_url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                deleted += await client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await client.unlink(*batch)
    finally:
        await client.aclose()
    return deleted


async def redis_pid(redis_url: str) -> int | None:
    """The redis-server's pid, if it runs on this machine."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        info: dict[str, Any] = await client.info("server")
    finally:
        await client.aclose()
    pid = int(info.get("process_id", 0))
    return pid if _comm(pid).startswith("redis") else None


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _postmaster_pid(data_dir: str) -> int:
    return int(Path(data_dir, "postmaster.pid").read_text().split()[0])


@dataclass(frozen=True, slots=True)
class PostgresSample:
    cluster_s: float
    # CPU seconds of each process working for another database, by pid.
    foreign_s: dict[int, float]


class PostgresCluster:
    """Samples the CPU of the Postgres cluster behind ``server_dsn`` (same machine only)."""

    def __init__(self, conn: asyncpg.Connection[Any], postmaster_pid: int) -> None:
        self.conn = conn
        self.postmaster_pid = postmaster_pid

    @classmethod
    async def open(cls, server_dsn: str) -> PostgresCluster | None:
        """None when the cluster's processes cannot be seen (another machine, no rights)."""
        conn = await asyncpg.connect(server_dsn)
        try:
            data_dir = await conn.fetchval("SHOW data_directory")
            pid = _postmaster_pid(data_dir)
        except (OSError, ValueError, asyncpg.PostgresError):
            await conn.close()
            return None
        if proc_times(pid) is None:
            await conn.close()
            return None
        return cls(conn, pid)

    async def close(self) -> None:
        await self.conn.close()

    async def sample(self, database: str) -> PostgresSample:
        # Client backends and autovacuum workers of other databases (rows without a
        # database are the cluster's own processes: WAL writer, checkpointer...).
        rows = await self.conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname IS NOT NULL AND datname <> $1",
            database,
        )
        foreign_pids = {int(r["pid"]) for r in rows}
        postmaster = proc_times(self.postmaster_pid)
        assert postmaster is not None, "the Postgres postmaster went away"
        total = postmaster.own_s + postmaster.reaped_s
        foreign: dict[int, float] = {}
        for pid, times in children_of(self.postmaster_pid).items():
            total += times.own_s
            if pid in foreign_pids:
                foreign[pid] = times.own_s
        return PostgresSample(total, foreign)

    async def next_xid(self) -> int:
        """The cluster's next transaction id: the difference between two readings is the
        number of transactions that wrote anything (read-only ones, like a pool's session
        reset, take no id; reading it takes none either)."""
        value = await self.conn.fetchval("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
        return int(value)

    @staticmethod
    def delta(before: PostgresSample, after: PostgresSample) -> tuple[float, float]:
        """(CPU seconds of the cluster for this database, of other databases' backends)."""
        foreign = sum(s - before.foreign_s.get(pid, 0.0) for pid, s in after.foreign_s.items())
        total = after.cluster_s - before.cluster_s
        return max(total - foreign, 0.0), foreign
