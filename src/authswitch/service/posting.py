"""Balance changes other than authorisations, made the same way: one atomic Redis step
(funds check, change, idempotency marker), then the group commit, then the answer.

Used by admin credits and debits and by the lifecycle messages that change balances.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from authswitch.adapters.postgres.committer import GroupCommitter
from authswitch.adapters.postgres.holds import HoldStore
from authswitch.adapters.redis.cache import ApplyResult, Duplicate, LedgerCache, Miss
from authswitch.domain.catalog import ProgramRow
from authswitch.domain.ledger import Balance, BalanceChange
from authswitch.domain.records import LedgerWrite, StoredDecision, WriteStatus
from authswitch.errors import InternalError
from authswitch.service.cache_sync import CacheSync
from authswitch.service.movements import with_movement

__all__ = ["REPLAY_PAUSES_S", "PostStatus", "Posted", "Poster", "durable_original"]

log = logging.getLogger(__name__)

T = TypeVar("T")

CACHE_ATTEMPTS_MAX = 3
# A message whose idempotency marker is set but whose decision is not durable yet (its
# original still committing, in this process or another) waits at most this long in total
# (the sum of the pauses) for the original's durable answer; only then is the marker taken
# for a failed attempt's and the message decided afresh.
REPLAY_PAUSES_S = (0.01, 0.03, 0.1, 0.3)


async def durable_original(holds: HoldStore, source: str, message_id: str) -> StoredDecision | None:
    """The durable decision under (source, message_id), waiting for one that is committing;
    None when there is none after the pauses."""
    for pause_s in (*REPLAY_PAUSES_S, None):
        stored = await holds.find_decision(source, message_id)
        if stored is not None or pause_s is None:
            return stored
        await asyncio.sleep(pause_s)
    return None


class PostStatus(Enum):
    COMMITTED = "committed"
    DUPLICATE = "duplicate"  # ``decision`` is the earlier one; compare fingerprints
    REFUSED = "refused"  # Postgres refused the funds (stale cache); the refusal is durable
    CONFLICT = "conflict"  # a hold it releases changed meanwhile; nothing written, re-plan
    INSUFFICIENT_FUNDS = "insufficient_funds"  # refused by the cache; nothing written
    NO_BALANCE = "no_balance"  # the account holds no balance in the asset; nothing written


@dataclass(frozen=True, slots=True)
class Posted:
    status: PostStatus
    decision: StoredDecision | None = None
    balance: Balance | None = None  # the cached balance after the change


class Poster:
    def __init__(
        self,
        *,
        holds: HoldStore,
        cache: LedgerCache,
        sync: CacheSync,
        committer: GroupCommitter,
    ) -> None:
        self.holds = holds
        self.cache = cache
        self.sync = sync
        self.committer = committer

    async def post(
        self,
        change: BalanceChange,
        *,
        source: str,
        message_id: str,
        fingerprint: bytes,
        build: Callable[[ApplyResult], LedgerWrite],
        usage: Sequence[tuple[str, int, int]] = (),
        program: ProgramRow | None = None,
        movement: str = "",
        movement_details: Mapping[str, object] | None = None,
    ) -> Posted:
        """Apply ``change`` (and counter adjustments) in Redis, then commit
        ``build(result)``; at most once per (source, message_id). ``program``: the
        account's, whose movement subscription adds a MOVEMENT notification (``movement``:
        its kind, by default the decision's)."""

        async def step(mark: str) -> Posted | Miss | Duplicate:
            result = await self.cache.apply(
                account_id=change.account_id,
                asset=change.asset,
                actual_delta_minor=change.actual_delta_minor,
                held_delta_minor=change.authorized_delta_minor,
                requires_funds=change.requires_funds,
                marker=(source, message_id, fingerprint),
                usage=usage,
                mark=mark,
            )
            if not isinstance(result, ApplyResult):
                return result
            if result.status == "NSF":
                return Posted(PostStatus.INSUFFICIENT_FUNDS, balance=result.balance)
            if result.status == "NOBALANCE":
                return Posted(PostStatus.NO_BALANCE)
            write = with_movement(
                build(result), program, change, result.balance, movement, movement_details
            )
            return await self._commit(change, result, write)

        posted = await self.attempts(change.account_id, source, message_id, step)
        if isinstance(posted, StoredDecision):
            return Posted(PostStatus.DUPLICATE, posted)
        return posted

    async def attempts(
        self,
        account_id: str,
        source: str,
        message_id: str,
        step: Callable[[str], Awaitable[T | Miss | Duplicate]],
        card_id: str | None = None,
    ) -> T | StoredDecision:
        """Run ``step`` — a cache script that sets the message's idempotency marker and
        records the in-flight mark it is given, then the commit of what it did — inside the
        account's in-flight mark, until it is done:
        reload the cached state after a miss (``card_id``: the card's, when only a card can
        be missing), answer a duplicate with its original's durable decision, and after any
        failure forget the marker and reload the account from Postgres."""
        for _ in range(CACHE_ATTEMPTS_MAX):
            with self.sync.in_flight(account_id) as mark:
                try:
                    result = await step(mark)
                except Exception:
                    self.sync.undo_later(account_id, source, message_id)
                    raise
            if isinstance(result, Duplicate):
                stored = await self.original(account_id, source, message_id)
                if stored is not None:
                    return stored
            elif isinstance(result, Miss):
                await self.sync.after_miss(account_id, card_id if result.card_only else None)
            else:
                return result
        raise InternalError("the account's cached state could not be loaded")

    async def original(
        self, account_id: str, source: str, message_id: str
    ) -> StoredDecision | None:
        """The durable decision of an earlier message with this id, whose marker the cache
        found (it may still be committing, in this process or another); None when there is
        none: its attempt failed or its process died before committing, so the marker is
        forgotten and the message is decided afresh (Postgres arbitrates if both commit)."""
        stored = await durable_original(self.holds, source, message_id)
        if stored is None:
            await self.cache.forget_marker(account_id, source, message_id)
        return stored

    async def _commit(
        self, change: BalanceChange, result: ApplyResult, write: LedgerWrite
    ) -> Posted:
        written = await self.committer.submit(write)
        if written.status is WriteStatus.COMMITTED:
            return Posted(PostStatus.COMMITTED, written.decision, result.balance)
        # Nothing of this change is durable: take it back out of the cache (counters, which
        # the adjustment cannot reach, by a reload).
        if write.usage:
            self.sync.refresh_later(change.account_id, written.status.value)
        await self.cache.adjust(
            change.account_id,
            result.epoch,
            change.asset,
            -change.actual_delta_minor,
            -change.authorized_delta_minor,
        )
        if written.status is WriteStatus.REFUSED:
            self.sync.refresh_later(change.account_id, "refused")
            return Posted(PostStatus.REFUSED, written.decision)
        if written.status is WriteStatus.CONFLICT:
            await self.cache.forget_marker(
                change.account_id, write.decision.source, write.decision.message_id
            )
            return Posted(PostStatus.CONFLICT, written.decision)
        return Posted(PostStatus.DUPLICATE, written.decision)

    async def record(self, write: LedgerWrite) -> Posted:
        """Commit a write that changes no cached balance (an acknowledgement, a tombstone)."""
        written = await self.committer.submit(write)
        status = {
            WriteStatus.COMMITTED: PostStatus.COMMITTED,
            WriteStatus.DUPLICATE: PostStatus.DUPLICATE,
            WriteStatus.CONFLICT: PostStatus.CONFLICT,
        }[written.status]
        return Posted(status, written.decision)
