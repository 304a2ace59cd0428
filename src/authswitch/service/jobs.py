"""Background jobs that run every so often (age-off, outbox, reports), once at a time across
all replicas: each run takes a Postgres advisory lock and skips when another process holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg

from authswitch import metrics

__all__ = ["PeriodicJob", "advisory_lock"]

log = logging.getLogger(__name__)


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


class PeriodicJob:
    """Runs ``work`` every ``interval_s`` seconds under an advisory lock until stopped.

    A failing run is logged and counted, and the job carries on at the next interval.
    """

    def __init__(
        self,
        name: str,
        interval_s: float,
        work: Callable[[], Awaitable[int]],
        pool: asyncpg.Pool[Any],
        lock_key: int,
    ) -> None:
        assert interval_s > 0
        self.name = name
        self.interval_s = interval_s
        self._work = work
        self._pool = pool
        self._lock_key = lock_key
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
        async with advisory_lock(self._pool, self._lock_key) as got:
            if not got:
                return None
            return await self._work()

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
