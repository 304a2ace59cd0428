"""Keeps the Redis cache equal to Postgres: loads, reloads and the in-flight bookkeeping
that makes a reload exact.

An account's cached state is (Postgres committed state) + (reservations made in Redis whose
writes have not committed yet). A reload replaces the cached state with a Postgres snapshot,
so it must not run while this process still has such writes in flight for the account:
:meth:`CacheSync.reload` first waits for them (they finish within the commit timeout), and
every operation marks itself in flight *before* its Redis step, and unmarks itself before
waiting for a reload (else the two would wait for each other).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterator
from typing import Any

from authswitch import metrics
from authswitch.adapters.postgres.ledger import LedgerStore
from authswitch.adapters.redis.cache import AccountSnapshot, LedgerCache
from authswitch.errors import StoreUnavailable
from authswitch.service.clock import Clock

__all__ = ["CacheSync"]

log = logging.getLogger(__name__)


class CacheSync:
    def __init__(
        self, cache: LedgerCache, ledger: LedgerStore, clock: Clock, *, drain_timeout_s: float
    ) -> None:
        self.cache = cache
        self.ledger = ledger
        self.clock = clock
        self._drain_timeout_s = drain_timeout_s
        self._in_flight: dict[str, int] = {}
        self._idle: dict[str, asyncio.Event] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    @contextlib.contextmanager
    def in_flight(self, account_id: str) -> Iterator[None]:
        """Mark an operation on ``account_id`` from before its Redis step until its write is
        durable (or known not to be)."""
        self._in_flight[account_id] = self._in_flight.get(account_id, 0) + 1
        try:
            yield
        finally:
            remaining = self._in_flight[account_id] - 1
            if remaining:
                self._in_flight[account_id] = remaining
            else:
                del self._in_flight[account_id]
                event = self._idle.pop(account_id, None)
                if event is not None:
                    event.set()

    def in_flight_count(self, account_id: str) -> int:
        return self._in_flight.get(account_id, 0)

    async def reload(self, account_id: str, cause: str) -> None:
        """Load the account's state from Postgres; concurrent callers share one load."""
        task = self._loading.get(account_id)
        if task is None:
            task = asyncio.create_task(self._load(account_id, cause), name=f"load-{cause}")
            self._loading[account_id] = task
            task.add_done_callback(lambda _t: self._loading.pop(account_id, None))
        await asyncio.shield(task)

    async def refresh(self, account_id: str, cause: str) -> None:
        """Drop the cached state and load it again (after an out-of-band change)."""
        await self.cache.invalidate(account_id)
        await self.reload(account_id, cause)

    async def after_miss(self, account_id: str, card_id: str | None = None) -> None:
        """What a cache step that found no state does before it tries again: the card's
        state when only a card was missing (``card_id``), else the account's, at the newest
        generation (another process may have raised it)."""
        if card_id is not None:
            await self.load_card(account_id, card_id)
        else:
            await self.cache.refresh_generation()
            await self.reload(account_id, "miss")

    def refresh_later(self, account_id: str, cause: str) -> None:
        """Reload the account from Postgres in the background, once nothing is in flight on
        it in this process (after a write that did not commit as the cache assumed)."""
        self._spawn(self.refresh(account_id, cause))

    def undo_later(self, account_id: str, source: str, message_id: str) -> None:
        """After a failed step whose Redis effect may have no durable record: forget its
        marker and reload the account from Postgres, in the background, once nothing is in
        flight on it (so call it from inside the in-flight mark, before it ends)."""
        self._spawn(self._undo(account_id, source, message_id))

    async def drain(self) -> None:
        """Wait for the background reloads (shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    async def _undo(self, account_id: str, source: str, message_id: str) -> None:
        try:
            await self.cache.forget_marker(account_id, source, message_id)
            await self.refresh(account_id, "failure")
        except Exception as exc:  # the next decision on the account reloads it on a miss
            metrics.STORE_ERRORS.labels("redis", "undo").inc()
            log.warning("undo after a failure did not finish", extra={"error": type(exc).__name__})

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def load_card(self, account_id: str, card_id: str) -> None:
        found = await self.ledger.card_state(card_id)
        if found is None or found[0] != account_id:
            # The card moved or vanished; its account's state is reloaded instead.
            await self.reload(account_id, "card_moved")
            return
        if await self.cache.load_card(account_id, card_id, found[1]):
            metrics.CACHE_LOADS.labels("card").inc()
        else:
            await self.reload(account_id, "miss")

    async def _load(self, account_id: str, cause: str) -> None:
        if account_id in self._in_flight:
            event = self._idle.setdefault(account_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), self._drain_timeout_s)
            except TimeoutError:
                raise StoreUnavailable(
                    f"writes in flight on an account did not finish in {self._drain_timeout_s}s"
                ) from None
        balances, cards, usage = await self.ledger.account_state(account_id, self.clock.now())
        await self.cache.load(AccountSnapshot(account_id, balances, cards, usage))
        metrics.CACHE_LOADS.labels(cause).inc()
        log.debug("cache loaded", extra={"cause": cause, "balances": len(balances)})
