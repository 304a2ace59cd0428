"""Keeps the Redis cache equal to Postgres: loads, reloads and the in-flight bookkeeping
that makes a reload exact, across every process that shares the Redis.

An account's cached state is (Postgres committed state) + (changes made in Redis whose
writes have not committed yet). A reload replaces the cached state with a Postgres snapshot,
so it must not read Postgres while any process still has such a write in flight for the
account. Every operation takes an in-flight mark (:meth:`CacheSync.in_flight`) before its
Redis step; the step's script records the mark in Redis, and the mark is removed once the
write is durable or known not to be. A reload sets a barrier that makes new operations wait
(their scripts answer MISS), waits for the marks to go, reads Postgres and replaces the
state (``adapters/redis/lua/begin_load.lua``). An operation reloads only outside its own
mark (else it would wait for itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections.abc import Coroutine, Iterator
from typing import Any

from authswitch import metrics
from authswitch.adapters.postgres.ledger import LedgerStore
from authswitch.adapters.redis.cache import AccountSnapshot, LedgerCache
from authswitch.errors import StoreUnavailable
from authswitch.service.clock import Clock

__all__ = ["CacheSync"]

log = logging.getLogger(__name__)

MARK_MAX_AGE_S = 60
# A process's heartbeat lives this long, renewed every third of it: a process that dies
# holds the reloads of accounts it had writes in flight on back for at most about this.
HEARTBEAT_TTL_MS = 3_000
# While marks remain, how often a reload asks whether their processes still live.
_LIVENESS_CHECK_S = 0.1
# How often a reload looks again whether the marks have gone (doubling up to the last).
_POLL_S = (0.001, 0.002, 0.005, 0.01, 0.02)


class CacheSync:
    def __init__(
        self, cache: LedgerCache, ledger: LedgerStore, clock: Clock, *, drain_timeout_s: float
    ) -> None:
        """``drain_timeout_s``: how long a reload waits for in-flight writes (a write
        finishes within the commit timeout); it fails (StoreUnavailable) if they have not
        finished by then, and the state stays as it was."""
        self.cache = cache
        self.ledger = ledger
        self.clock = clock
        self._drain_timeout_s = drain_timeout_s
        # A reload's barrier older than this is taken for one whose process stopped: its
        # holder waits at most the drain timeout, then reads Postgres (the same bound).
        self._stale_ms = int(drain_timeout_s * 2000) + 1000
        # A mark older than any write can take (the commit timeout, a client's deadline,
        # many times over) is one whose process died: a reload drops it.
        self._mark_max_age_s = max(MARK_MAX_AGE_S, int(4 * drain_timeout_s))
        self.process = secrets.token_hex(4)  # marks carry it; its heartbeat says it lives
        self._mark_prefix = self.process + ":"
        self._beating: asyncio.Task[None] | None = None
        self._marks = itertools.count()
        self._releases: dict[str, list[str]] = {}
        self._loading: dict[str, asyncio.Task[None]] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Begin this process's heartbeat (before any mark is taken)."""
        await self.cache.beat(self.process, HEARTBEAT_TTL_MS)
        self._beating = asyncio.create_task(self._beat(), name="cache-heartbeat")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_TTL_MS / 3000)
            try:
                await self.cache.beat(self.process, HEARTBEAT_TTL_MS)
            except Exception as exc:  # Redis is down: nothing decides on it meanwhile
                log.warning("heartbeat not renewed", extra={"error": type(exc).__name__})
            # Processes that start together each raise the generation; one that raised it
            # first would otherwise keep stamping what it loads with its own, older one,
            # which every other process reloads on use and reconciliation cannot see (it
            # compares what the newest generation holds). So each adopts the newest here.
            try:
                await self.cache.refresh_generation()
            except Exception as exc:  # as the beat: this task must outlive any failure
                log.debug("generation not refreshed", extra={"error": type(exc).__name__})

    @contextlib.contextmanager
    def in_flight(self, account_id: str) -> Iterator[str]:
        """An operation on ``account_id`` from before its Redis step until its write is
        durable (or known not to be): yields its mark, for the step's script to record
        (a script that answers MISS or DUP records nothing; removing it is then harmless).
        Marks are removed in one command per account after the current callbacks run."""
        mark = self._mark_prefix + str(next(self._marks))
        try:
            yield mark
        finally:
            releases = self._releases
            if not releases:
                asyncio.get_running_loop().call_soon(self._release)
            pending = releases.get(account_id)
            if pending is None:
                releases[account_id] = [mark]
            else:
                pending.append(mark)

    def _release(self) -> None:
        releases, self._releases = self._releases, {}
        for account_id, marks in releases.items():
            self.cache.release(account_id, marks)

    async def reload(self, account_id: str, cause: str) -> None:
        """Load the account's state from Postgres, unless another process's reload made it
        usable meanwhile; concurrent callers in this process share one load."""
        task = self._loading.get(account_id)
        if task is None:
            task = asyncio.create_task(self._load(account_id, cause), name=f"load-{cause}")
            self._loading[account_id] = task
            task.add_done_callback(lambda _t: self._loading.pop(account_id, None))
        await asyncio.shield(task)

    async def refresh(self, account_id: str, cause: str) -> None:
        """Load the account's state again from what Postgres holds now (after an
        out-of-band change, or a write that did not commit as the cache assumed)."""
        await self._load(account_id, cause, refresh=True)

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
        it (after a write that did not commit as the cache assumed)."""
        self._spawn(self.refresh(account_id, cause))

    def undo_later(self, account_id: str, source: str, message_id: str) -> None:
        """After a failed step whose Redis effect may have no durable record: forget its
        marker and reload the account from Postgres, in the background, once nothing is in
        flight on it (so call it from inside the in-flight mark, before it ends)."""
        self._spawn(self._undo(account_id, source, message_id))

    async def drain(self) -> None:
        """Wait for the background reloads, send the marks still to release and stop the
        heartbeat (shutdown)."""
        self._release()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self._beating is not None:
            self._beating.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._beating
            self._beating = None
            try:
                await self.cache.stop_beating(self.process)
            except Exception as exc:  # it expires by itself
                log.debug("heartbeat not removed", extra={"error": type(exc).__name__})

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
            # The card moved or vanished (or spends from this account, which it does not
            # belong to: a linked account's snapshot carries it): the account's state is
            # read again, however usable the cached one looks.
            await self.refresh(account_id, "card_moved")
            return
        if await self.cache.load_card(account_id, card_id, found[1]):
            metrics.CACHE_LOADS.labels("card").inc()
        else:
            await self.reload(account_id, "miss")

    async def _load(self, account_id: str, cause: str, *, refresh: bool = False) -> None:
        token = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        gives_up = loop.time() + self._drain_timeout_s
        polls = iter(_POLL_S)
        pause = _POLL_S[0]
        next_check = loop.time() + _LIVENESS_CHECK_S
        while True:
            begun = await self.cache.begin_load(
                account_id, token, refresh=refresh, stale_ms=self._stale_ms,
                mark_max_age_s=self._mark_max_age_s,
            )  # fmt: skip
            if begun is True:
                return  # another process loaded it meanwhile
            if begun is not False:
                marks, expired = begun
                if expired:
                    metrics.CACHE_MARKS_EXPIRED.inc(expired)
                    log.warning(
                        "in-flight marks of a dead process dropped", extra={"marks": expired}
                    )
                if not marks:
                    break
                if loop.time() >= next_check:  # marks of processes that died are dropped
                    next_check = loop.time() + _LIVENESS_CHECK_S
                    if await self._drop_dead_marks(account_id):
                        continue
                if loop.time() >= gives_up:
                    await self._abandon(account_id, token)
                    raise StoreUnavailable(
                        f"writes in flight on an account did not finish in {self._drain_timeout_s}s"
                    )
            await asyncio.sleep(pause)
            pause = next(polls, pause)
        try:
            balances, cards, usage = await self.ledger.account_state(account_id, self.clock.now())
        except Exception:
            await self._abandon(account_id, token)
            raise
        snapshot = AccountSnapshot(account_id, balances, cards, usage)
        if await self.cache.load(snapshot, token) is None:
            # The barrier was taken over as stale: this process was too slow to trust.
            raise StoreUnavailable("the account's reload did not finish in time")
        metrics.CACHE_LOADS.labels(cause).inc()
        log.debug("cache loaded", extra={"cause": cause, "balances": len(balances)})

    async def _drop_dead_marks(self, account_id: str) -> int:
        """Drop the account's in-flight marks whose processes have no heartbeat."""
        marks = await self.cache.marks_in_flight(account_id)
        owners = {mark.partition(":")[0] for mark in marks} - {self.process}
        dead = owners - await self.cache.alive(sorted(owners))
        gone = [mark for mark in marks if mark.partition(":")[0] in dead]
        if gone:
            await self.cache.drop_marks(account_id, gone)
            metrics.CACHE_MARKS_EXPIRED.inc(len(gone))
            log.warning("in-flight marks of a dead process dropped", extra={"marks": len(gone)})
        return len(gone)

    async def _abandon(self, account_id: str, token: str) -> None:
        """Drop a failed reload's barrier: operations go on with the state as the reload
        found it (a refresh's is gone already; a miss's was unusable), so they reload it."""
        try:
            await self.cache.abandon_load(account_id, token)
        except Exception as exc:  # it turns stale, and is taken over, after a while
            log.warning("a reload's barrier was not dropped", extra={"error": type(exc).__name__})
