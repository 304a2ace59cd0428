"""Background jobs that run every so often (age-off, reports, partitions...), once at a time
across all replicas: each run holds a lock, and a process that cannot get it skips the run.

Two kinds of lock, one per way of reaching Postgres (adapters/postgres/pool.py):

* directly: a **session advisory lock**, held on one pooled connection for the run and gone
  the moment that connection closes (a crashed process frees it at once);
* through pgbouncer in transaction mode (``lease=True``): a session lock would stay on a
  server connection that other clients go on to use, and a transaction-scoped one would hold
  a server connection idle in a transaction for the whole run (with a small pgbouncer pool,
  the runs' own statements could then wait for a connection forever). So the job takes a
  **lease**, a row of ``job_leases`` that expires: taken with one statement when free or
  expired, renewed every third of its time-to-live while the run lasts, and given back at the
  end. A run whose renewal fails is cancelled before its lease can expire, so two runs never
  overlap; a crashed process holds the job up for at most one time-to-live.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from authswitch import metrics
from authswitch.errors import InternalError

__all__ = ["LEASE_TTL_S", "JobLease", "PeriodicJob", "advisory_lock"]

log = logging.getLogger(__name__)

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


class PeriodicJob:
    """Runs ``work`` every ``interval_s`` seconds, once at a time across processes, until
    stopped: under the advisory lock ``lock_key``, or (``lease=True``, behind pgbouncer) under
    the lease named after the job.

    A failing run is logged and counted, and the job carries on at the next interval.
    """

    def __init__(
        self,
        name: str,
        interval_s: float,
        work: Callable[[], Awaitable[int]],
        pool: asyncpg.Pool[Any],
        lock_key: int,
        *,
        lease: bool = False,
        lease_ttl_s: float = LEASE_TTL_S,
    ) -> None:
        assert interval_s > 0
        self.name = name
        self.interval_s = interval_s
        self._work = work
        self._pool = pool
        self._lock_key = lock_key
        self._lease = JobLease(pool, name, ttl_s=lease_ttl_s) if lease else None
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()

    def start(self) -> None:
        assert self._task is None
        self._task = asyncio.create_task(self._loop(), name=f"job-{self.name}")

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def run_once(self) -> int | None:
        """One run if the lock is free; returns its count, or None when another process ran."""
        lease = self._lease
        if lease is None:
            async with advisory_lock(self._pool, self._lock_key) as got:
                if not got:
                    return None
                return await self._work()
        if not await lease.acquire():
            return None
        try:
            return await lease.run(self._work)
        finally:
            with contextlib.suppress(Exception):  # unreleased, it expires by itself
                await lease.release()

    async def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                done = await self.run_once()
                if done:
                    log.info("job ran", extra={"job": self.name, "count": done})
            except Exception as exc:
                metrics.STORE_ERRORS.labels("postgres", f"job_{self.name}").inc()
                log.warning("job failed", extra={"job": self.name, "error": type(exc).__name__})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.interval_s)
