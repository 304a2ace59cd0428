"""Background jobs that run every so often (age-off, reports, partitions...), once at a time
across all replicas: each run holds a lock (adapters/postgres/locks.py: a session advisory
lock, or behind pgbouncer a lease), and a process that cannot get it skips the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from authswitch import metrics
from authswitch.adapters.postgres.locks import LEASE_TTL_S, JobLease, Pool, advisory_lock

__all__ = ["PeriodicJob"]

log = logging.getLogger(__name__)


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
        pool: Pool,
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
