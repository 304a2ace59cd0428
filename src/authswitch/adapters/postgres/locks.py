"""Locks that let one process at a time run a job across all replicas (service/jobs.py).

Two kinds, one per way of reaching Postgres (adapters/postgres/pool.py):

* directly: a **session advisory lock**, held on one pooled connection for the run and gone
  the moment that connection closes (a crashed process frees it at once);
* through pgbouncer in transaction mode: a session lock would stay on a server connection
  that other clients go on to use, and a transaction-scoped one would hold a server
  connection idle in a transaction for the whole run (with a small pgbouncer pool, the runs'
  own statements could then wait for a connection forever). So the job takes a **lease**, a
  row of ``job_leases`` that expires: taken with one statement when free or expired, renewed
  every third of its time-to-live while the run lasts, and given back at the end. A run whose
  renewal fails is cancelled before its lease can expire, so two runs never overlap; a
  crashed process holds the job up for at most one time-to-live.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import asyncpg

from authswitch.errors import InternalError

__all__ = ["LEASE_TTL_S", "JobLease", "Pool", "advisory_lock"]

# The pool a job's lock is taken on (named here so callers need not import the driver).
Pool: TypeAlias = "asyncpg.Pool[Any]"

LEASE_TTL_S = 30.0


@contextlib.asynccontextmanager
async def advisory_lock(pool: asyncpg.Pool[Any], key: int) -> AsyncIterator[bool]:
    """Try a session advisory lock; yields whether this process got it."""
    async with pool.acquire() as conn:
        got = bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))
        try:
            yield got
        finally:
            if got:
                await conn.execute("SELECT pg_advisory_unlock($1)", key)


class JobLease:
    """The lease of one job for one process (its ``holder`` id). Every statement is a single
    autocommit statement, so it works the same through pgbouncer."""

    def __init__(self, pool: asyncpg.Pool[Any], name: str, *, ttl_s: float = LEASE_TTL_S) -> None:
        assert ttl_s > 0
        self.pool = pool
        self.name = name
        self.ttl_s = ttl_s
        self.holder = str(uuid.uuid4())

    async def acquire(self) -> bool:
        """Take the lease if it is free, expired, or already ours."""
        taken = await self.pool.fetchval(
            """INSERT INTO job_leases AS l (name, holder, acquired_at, expires_at)
               VALUES ($1, $2, clock_timestamp(),
                       clock_timestamp() + $3 * interval '1 millisecond')
               ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder,
                   acquired_at = EXCLUDED.acquired_at, expires_at = EXCLUDED.expires_at
               WHERE l.expires_at <= clock_timestamp() OR l.holder = EXCLUDED.holder
               RETURNING true""",
            self.name,
            self.holder,
            int(self.ttl_s * 1000),
        )
        return bool(taken)

    async def renew(self) -> bool:
        """Extend the lease by its time-to-live; False when it is no longer ours."""
        renewed = await self.pool.fetchval(
            """UPDATE job_leases SET expires_at = clock_timestamp() + $3 * interval '1 millisecond'
               WHERE name = $1 AND holder = $2 AND expires_at > clock_timestamp()
               RETURNING true""",
            self.name,
            self.holder,
            int(self.ttl_s * 1000),
        )
        return bool(renewed)

    async def release(self) -> None:
        await self.pool.execute(
            """UPDATE job_leases SET expires_at = clock_timestamp()
               WHERE name = $1 AND holder = $2""",
            self.name,
            self.holder,
        )

    async def run(self, work: Callable[[], Awaitable[int]]) -> int:
        """Run ``work`` (the lease is held), renewing the lease meanwhile; cancels the work
        and raises InternalError when a renewal fails."""
        task = asyncio.ensure_future(work())
        every_s = self.ttl_s / 3
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=every_s)
                if done:
                    return task.result()
                try:
                    renewed = await asyncio.wait_for(self.renew(), every_s)
                except Exception:
                    renewed = False
                if not renewed:
                    raise InternalError(f"the lease of job {self.name} was lost mid-run")
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
