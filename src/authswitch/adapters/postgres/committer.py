"""The group committer: many decisions, one Postgres transaction.

A decision's answer goes back only after its record (and hold, balance change, postings) is
committed. Committing each decision in its own transaction would serialise every request on
a hot account's balance row; instead writes queue here and are committed in batches, with
each balance row updated once per batch by the batch's net delta (DESIGN.md §5.7).

Lifecycle: ``start()`` → ``submit()``... → ``stop()`` (drains the queue, then returns).
Limits: the queue holds at most ``queue_max`` writes (``submit`` raises :class:`Overloaded`
beyond it); a batch holds at most ``batch_max`` writes; one batch is in flight at a time, so
batches commit in submission order and a batch grows while the previous one commits.

Postgres has the last word on funds: the batch locks the balance rows it touches and replays
its writes in order (``admit_in_order``); a write whose funds Postgres refuses is recorded
as its ``refusal`` decision instead. That only happens when the Redis cache was stale.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from authswitch import metrics
from authswitch.adapters.postgres.onestatement import (
    HOLD_KEYS,
    BatchRefused,
    suits,
    write_at_once,
)
from authswitch.adapters.postgres.pool import REPLICATION_BARRIER, Connection
from authswitch.domain.ledger import Balance, admit_in_order
from authswitch.domain.records import (
    CardUpdate,
    ClientCall,
    ConversionRecord,
    DecisionRecord,
    DisputeChange,
    HoldRelease,
    JournalEntry,
    LedgerWrite,
    Notification,
    StoredDecision,
    Tombstone,
    UsageChange,
    WriteResult,
    WriteStatus,
)
from authswitch.errors import Overloaded, StoreUnavailable
from authswitch.futures import Detached, outlive_cancel

__all__ = [
    "GroupCommitter",
    "stored_decision_of",
    "write_notifications",
]

log = logging.getLogger(__name__)


def _stored(record: DecisionRecord) -> StoredDecision:
    return StoredDecision(
        record.id,
        record.source,
        record.message_id,
        record.fingerprint,
        record.reason,
        record.response_code,
        record.response,
        record.account_id,
    )


_Item = tuple[LedgerWrite, "asyncio.Future[WriteResult]", float]

_SELECT_DECISIONS = """
    SELECT d.id::text, d.source, d.message_id, d.fingerprint, d.reason, d.response_code,
           d.response, d.account_id::text
    FROM decisions d
    JOIN unnest($1::text[], $2::text[]) AS k(source, message_id) USING (source, message_id)
"""

RECOVER_TIMEOUT_S = 2.0  # each step of the read-back after a failed commit
# Writes waiting when a batch could start from which it waits ``linger_us`` for more first.
LINGER_BACKLOG = 2


class GroupCommitter:
    def __init__(
        self,
        pool: asyncpg.Pool[Any],
        *,
        batch_max: int,
        queue_max: int,
        linger_us: int = 0,
        one_statement: bool = True,
    ) -> None:
        """``one_statement``: write a batch that suits it in one statement
        (``onestatement.py``); off behind pgbouncer, where statements are not prepared."""
        assert batch_max > 0
        assert queue_max > 0
        assert linger_us >= 0
        self._pool = pool
        self._batch_max = batch_max
        self._queue_max = queue_max
        self._linger_s = linger_us / 1_000_000
        self._one_statement = one_statement
        self._waited = metrics.HotHistogram(metrics.COMMIT_QUEUE_WAIT_SECONDS)
        self._sizes = metrics.HotHistogram(metrics.COMMIT_BATCH_SIZE)
        self._durations = metrics.HotHistogram(metrics.COMMIT_BATCH_SECONDS)
        self._queue: collections.deque[_Item] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        # Batches commit one after another, so the committer keeps one connection for them:
        # no pool acquire, and no reset query on release, per batch (a round trip each).
        # Given back after a failed batch (the pool closes a broken one) and when stopping.
        self._conn: Any = None
        # Called after a batch that wrote notifications has committed (wakes the outbox).
        self.after_notifications: Callable[[], None] | None = None

    @property
    def depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        assert self._task is None, "started twice"
        self._task = asyncio.create_task(self._run(), name="group-committer")

    async def stop(self) -> None:
        """Commit everything queued, then stop. New submissions are refused meanwhile."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def submit(self, write: LedgerWrite) -> WriteResult:
        """Queue ``write`` and wait until it is durable (or refused, or a duplicate).

        Raises :class:`Overloaded` when the queue is full or the committer is stopping, and
        :class:`StoreUnavailable` when Postgres failed and the write is known not committed.

        Once queued, the write's outcome is awaited even if the caller is cancelled (the
        cancellation stays pending on its task: futures.py): what it obliges the caller to
        do afterwards (end its in-flight mark, undo a refused reservation) is then done.
        """
        if self._stopping:
            raise Overloaded("the group committer is stopping")
        if len(self._queue) >= self._queue_max:
            raise Overloaded(f"group-commit queue full ({self._queue_max} writes)")
        future: asyncio.Future[WriteResult] = Detached(loop=asyncio.get_running_loop())
        self._queue.append((write, future, time.perf_counter()))
        self._wake.set()
        return await outlive_cancel(future)

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._stopping:
                        return
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                if self._linger_s and LINGER_BACKLOG <= len(self._queue) < self._batch_max:
                    # A backlog formed while the previous batch committed: the process is
                    # busy, so wait a moment for a bigger batch (a batch's statement costs
                    # Postgres about as much as four of its writes). A lone write, at low
                    # load, is committed at once.
                    await asyncio.sleep(self._linger_s)
                count = min(len(self._queue), self._batch_max)
                batch = [self._queue.popleft() for _ in range(count)]
                metrics.COMMIT_QUEUE_DEPTH.set(len(self._queue))
                await self._commit(batch)
        finally:
            await self._give_back_connection()

    async def _give_back_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.release(conn)

    async def _commit(self, batch: list[_Item]) -> None:
        started = time.perf_counter()
        waited = self._waited
        for _, _, queued in batch:
            waited.observe(started - queued)
        self._sizes.observe(len(batch))
        writes = [write for write, _, _ in batch]
        try:
            results: Sequence[WriteResult | BaseException] = await self._write_batch(writes)
        except Exception as exc:  # any failure: find out what, if anything, committed
            metrics.STORE_ERRORS.labels("postgres", "group_commit").inc()
            log.warning(
                "group commit of %d writes failed: %s", len(batch), type(exc).__name__,
                exc_info=exc,
            )  # fmt: skip
            results = await self._recover(writes, exc)
        finally:
            self._durations.observe(time.perf_counter() - started)
        if self.after_notifications is not None and any(w.notifications for w in writes):
            self.after_notifications()
        for (_, future, _), result in zip(batch, results, strict=True):
            if future.done():  # the submitter was cancelled
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    async def _recover(
        self, writes: list[LedgerWrite], cause: Exception
    ) -> list[WriteResult | BaseException]:
        """After a failed commit, read back which writes are durable anyway (a connection
        lost during COMMIT can hide a successful commit). What cannot be confirmed is
        reported as not committed: the caller answers 96 and reloads the cache.

        A commit found on the primary is confirmed only once a later commit has been
        acknowledged (the replication barrier): with a synchronous standby, a COMMIT whose
        wait for the standby was cancelled (our command timeout) is durable on the primary
        alone, and an approval for it would be lost if the primary failed over. The barrier's
        own commit waits for the standby to have everything before it, so it confirms the
        decisions read; if the standby does not answer in time, nothing is confirmed."""
        unavailable = StoreUnavailable(f"Postgres commit failed: {type(cause).__name__}")
        try:
            async with self._pool.acquire(timeout=RECOVER_TIMEOUT_S) as conn:
                rows = await conn.fetch(
                    _SELECT_DECISIONS,
                    [w.decision.source for w in writes],
                    [w.decision.message_id for w in writes],
                    timeout=RECOVER_TIMEOUT_S,
                )
                if rows:
                    await conn.execute(REPLICATION_BARRIER, timeout=RECOVER_TIMEOUT_S)
        except Exception:
            metrics.STORE_ERRORS.labels("postgres", "group_commit_recover").inc()
            return [unavailable] * len(writes)
        stored = {(r["source"], r["message_id"]): stored_decision_of(r) for r in rows}
        results: list[WriteResult | BaseException] = []
        for write in writes:
            found = stored.get(write.decision.key)
            if found is None or found.id != write.decision.id:
                # Not ours: either nothing is durable (safe to answer 96), or another
                # message's decision holds the key and ours never committed.
                results.append(unavailable)
            elif found.reason == write.decision.reason:
                results.append(WriteResult(WriteStatus.COMMITTED, found))
            else:
                results.append(WriteResult(WriteStatus.REFUSED, found))
        return results

    async def _write_batch(self, writes: list[LedgerWrite]) -> list[WriteResult | BaseException]:
        if self._conn is None:
            self._conn = await self._pool.acquire()
        conn = self._conn
        try:
            if self._one_statement and suits(writes):
                try:
                    return await _written_at_once(conn, writes)
                except BatchRefused:
                    # Nothing was written: replay it write by write, which refuses exactly
                    # what Postgres must refuse (the cache was stale, or a lock cycle).
                    metrics.COMMIT_REPLAYS.inc()
            async with conn.transaction():
                return await write_batch(conn, writes)
        except BaseException:
            await self._give_back_connection()
            raise


async def _written_at_once(
    conn: Connection, writes: list[LedgerWrite]
) -> list[WriteResult | BaseException]:
    done = await write_at_once(conn, writes)
    existing: dict[tuple[str, str], StoredDecision] = {}
    duplicates = [w.decision for i, w in enumerate(writes) if i not in done.inserted]
    if duplicates:  # decided before, by another process: what is durable under their keys
        rows = await conn.fetch(
            _SELECT_DECISIONS, [d.source for d in duplicates], [d.message_id for d in duplicates]
        )
        existing = {(r["source"], r["message_id"]): stored_decision_of(r) for r in rows}
    results: list[WriteResult | BaseException] = []
    for index, write in enumerate(writes):
        if index in done.inserted:
            results.append(
                WriteResult(
                    WriteStatus.COMMITTED,
                    _stored(write.decision),
                    done.pre_reversed.get(index, 0),
                )
            )
            continue
        stored = existing.get(write.decision.key)
        if stored is None:  # cannot happen: decisions are never deleted
            results.append(StoreUnavailable("duplicate decision vanished"))
        else:
            results.append(WriteResult(WriteStatus.DUPLICATE, stored))
    return results


def stored_decision_of(row: Any) -> StoredDecision:
    """A decision row (id, source, message_id, fingerprint, reason, response_code, response,
    account_id) as the committer and the holds' store return it."""
    return StoredDecision(
        row["id"],
        row["source"],
        row["message_id"],
        bytes(row["fingerprint"]),
        row["reason"],
        row["response_code"],
        bytes(row["response"]),
        row["account_id"],
    )


@dataclass(slots=True)
class _HoldState:
    status: str
    amount_minor: int
    tombstone: bool


async def write_batch(
    conn: Connection, writes: list[LedgerWrite]
) -> list[WriteResult | BaseException]:
    """Write one batch inside the caller's transaction; returns a result per write.

    Phases: (1) a second write under a key already in the batch is its duplicate; (2) lock
    the holds and balances the batch touches; replay the writes in order, and mark as
    conflicts those whose hold releases no longer match, and as refused those whose funds
    Postgres does not see; (3) record the decisions, where a key that already exists makes
    its write a duplicate; (4) apply the effects of the rest.
    """
    first_index: dict[tuple[str, str], int] = {}
    in_batch_duplicate: dict[int, int] = {}
    for index, write in enumerate(writes):
        key = write.decision.key
        if key in first_index:
            in_batch_duplicate[index] = first_index[key]
        else:
            first_index[key] = index
    candidates = [i for i in range(len(writes)) if i not in in_batch_duplicate]

    conflicts = await _check_holds(conn, [(i, writes[i]) for i in candidates])
    conflicts |= await _check_disputes(
        conn, [(i, writes[i]) for i in candidates if i not in conflicts]
    )
    candidates = [i for i in candidates if i not in conflicts]

    refused = await _refused_funds(conn, writes, candidates)
    records: dict[int, DecisionRecord] = {}
    for i in candidates:
        if i in refused:
            refusal = writes[i].refusal
            assert refusal is not None, "a write that requires funds must say how it is refused"
            records[i] = refusal()
        else:
            records[i] = writes[i].decision

    inserted = await _insert_decisions(conn, [records[i] for i in candidates])
    duplicates = [i for i in candidates if records[i].key not in inserted]
    effective = [i for i in candidates if i not in refused and records[i].key in inserted]

    taken = await _apply_effects(conn, [writes[i] for i in effective])
    pre_reversed = {effective[position]: amount for position, amount in taken.items()}

    existing: dict[tuple[str, str], StoredDecision] = {}
    if duplicates:
        rows = await conn.fetch(
            _SELECT_DECISIONS,
            [records[i].source for i in duplicates],
            [records[i].message_id for i in duplicates],
        )
        existing = {(r["source"], r["message_id"]): stored_decision_of(r) for r in rows}
    return [
        _result_of(index, write, in_batch_duplicate, conflicts, records, inserted, existing,
                   refused, pre_reversed)
        for index, write in enumerate(writes)
    ]  # fmt: skip


async def _refused_funds(
    conn: Connection, writes: list[LedgerWrite], candidates: list[int]
) -> set[int]:
    """Lock the balances the candidates change and replay them in order: the writes whose
    funds Postgres does not see (or whose balance row does not exist) are refused."""
    keys = sorted({c.key for i in candidates for c in writes[i].balance_changes})
    balances: dict[tuple[str, str], Balance] = {}
    if keys:
        rows = await conn.fetch(_LOCK_BALANCES, [k[0] for k in keys], [k[1] for k in keys])
        balances = {(r[0], r[1]): Balance(r[2], r[3]) for r in rows}
    missing = {k for k in keys if k not in balances}
    has_missing = {
        i for i in candidates if any(c.key in missing for c in writes[i].balance_changes)
    }
    refused, _ = admit_in_order(
        balances, ((i, writes[i].balance_changes) for i in candidates if i not in has_missing)
    )
    return refused | has_missing


async def _insert_decisions(
    conn: Connection, ordered: list[DecisionRecord]
) -> set[tuple[str, str]]:
    """Record the decisions; returns the keys inserted (the others existed already)."""
    if not ordered:
        return set()
    inserted_rows = await conn.fetch(
        _INSERT_DECISIONS,
        [d.source for d in ordered],
        [d.message_id for d in ordered],
        [d.id for d in ordered],
        [d.kind for d in ordered],
        [d.fingerprint for d in ordered],
        [d.card_id for d in ordered],
        [d.account_id for d in ordered],
        [d.asset for d in ordered],
        [d.amount_minor for d in ordered],
        [d.approved_minor for d in ordered],
        [d.fee_minor for d in ordered],
        [d.response_code for d in ordered],
        [d.reason for d in ordered],
        [d.response for d in ordered],
        [d.created_at for d in ordered],
    )
    return {(r[0], r[1]) for r in inserted_rows}


def _result_of(
    index: int, write: LedgerWrite, in_batch_duplicate: dict[int, int], conflicts: set[int],
    records: dict[int, DecisionRecord], inserted: set[tuple[str, str]],
    existing: dict[tuple[str, str], StoredDecision], refused: set[int],
    pre_reversed: dict[int, int],
) -> WriteResult | BaseException:  # fmt: skip
    """What became of one write of the batch."""
    original = in_batch_duplicate.get(index)
    if original is not None:
        first = records.get(original)
        if first is None:  # the first conflicted: so does this one
            return WriteResult(WriteStatus.CONFLICT, _stored(write.decision))
        return WriteResult(WriteStatus.DUPLICATE, _stored(first))
    if index in conflicts:
        return WriteResult(WriteStatus.CONFLICT, _stored(write.decision))
    key = write.decision.key
    if key not in inserted:
        stored = existing.get(key)
        if stored is None:  # cannot happen: decisions are never deleted
            return StoreUnavailable("duplicate decision vanished")
        return WriteResult(WriteStatus.DUPLICATE, stored)
    if index in refused:
        return WriteResult(WriteStatus.REFUSED, _stored(records[index]))
    return WriteResult(WriteStatus.COMMITTED, _stored(records[index]), pre_reversed.get(index, 0))


_LOCK_BALANCES = """
    SELECT b.account_id::text, b.asset, b.actual_minor, b.authorized_minor
    FROM balances b
    JOIN unnest($1::uuid[], $2::text[]) AS k(account_id, asset) USING (account_id, asset)
    ORDER BY b.account_id, b.asset
    FOR UPDATE OF b
"""
_INSERT_DECISIONS = """
    INSERT INTO decisions (source, message_id, id, kind, fingerprint, card_id, account_id,
        asset, amount_minor, approved_minor, fee_minor, response_code, reason, response,
        created_at)
    SELECT * FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[], $5::bytea[],
        $6::uuid[], $7::uuid[], $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::text[],
        $13::int2[], $14::bytea[], $15::timestamptz[])
    ON CONFLICT (source, message_id) DO NOTHING
    RETURNING source, message_id
"""


async def _check_holds(conn: Connection, writes: list[tuple[int, LedgerWrite]]) -> set[int]:
    """Lock the holds the batch releases or tombstones, replay the writes in order, and
    return the indexes of writes that conflict (a hold moved on since it was read)."""
    hold_ids = sorted({r.plan.hold_id for _, w in writes for r in w.releases})
    tomb_keys = sorted({(t.source, t.message_id) for _, w in writes for t in w.tombstones})
    if not hold_ids and not tomb_keys:
        return set()
    state: dict[str, _HoldState] = {}
    if hold_ids:
        rows = await conn.fetch(
            """SELECT id::text, status, amount_minor FROM holds
               WHERE id = ANY($1::uuid[]) ORDER BY id FOR UPDATE""",
            hold_ids,
        )
        state = {r[0]: _HoldState(r[1], r[2], False) for r in rows}
    tombs: dict[tuple[str, str], bool] = {}
    if tomb_keys:
        # A key with a hold is no tombstone's: the reversal's original has come meanwhile.
        rows = await conn.fetch(
            """SELECT h.source, h.message_id, h.hold_id IS NULL FROM hold_keys h
               JOIN unnest($1::text[], $2::text[]) AS k(source, message_id)
                 USING (source, message_id)
               ORDER BY h.source, h.message_id
               FOR UPDATE OF h""",
            [k[0] for k in tomb_keys],
            [k[1] for k in tomb_keys],
        )
        tombs = {(r[0], r[1]): r[2] for r in rows}
    conflicts: set[int] = set()
    released: set[str] = set()  # one release per hold per batch; a second one retries
    for index, write in writes:
        trial: dict[str, _HoldState] = {}
        ok = True
        for release in write.releases:
            plan = release.plan
            current = state.get(plan.hold_id)
            if (
                plan.hold_id in released
                or plan.hold_id in trial
                or current is None
                or current.status != "OPEN"
                or current.amount_minor != plan.expected_minor
            ):
                ok = False
                break
            remaining = current.amount_minor - plan.release_minor
            trial[plan.hold_id] = _HoldState(
                "OPEN" if remaining else plan.end.value, remaining, False
            )
        for tomb in write.tombstones:
            if tombs.get((tomb.source, tomb.message_id)) is False:  # a real hold is there
                ok = False
        if ok:
            state.update(trial)
            released.update(trial)
        else:
            conflicts.add(index)
    return conflicts


async def _check_disputes(conn: Connection, writes: list[tuple[int, LedgerWrite]]) -> set[int]:
    """Lock the disputes the batch moves (and, for new disputes, the clearings they dispute),
    replay the steps in order, and return the indexes of writes that conflict: a dispute
    that moved on, or a clearing whose disputes would claim more than was cleared."""
    changes = [(i, c) for i, w in writes for c in w.disputes]
    if not changes:
        return set()
    status: dict[str, str] = {}
    existing = sorted({c.dispute_id for _, c in changes if c.opening is None})
    if existing:
        rows = await conn.fetch(
            """SELECT id::text, status FROM disputes WHERE id = ANY($1::uuid[])
               ORDER BY id FOR UPDATE""",
            existing,
        )
        status = {r[0]: r[1] for r in rows}
    openings = sorted(
        {(c.opening.clearing_source, c.opening.clearing_message_id) for _, c in changes
         if c.opening is not None}
    )  # fmt: skip
    claimed: dict[tuple[str, str], int] = {}
    if openings:
        sources, message_ids = [k[0] for k in openings], [k[1] for k in openings]
        await conn.execute(
            """SELECT 1 FROM decisions d JOIN unnest($1::text[], $2::text[])
                 AS k(source, message_id) USING (source, message_id)
               ORDER BY d.source, d.message_id FOR UPDATE OF d""",
            sources,
            message_ids,
        )
        rows = await conn.fetch(
            """SELECT d.clearing_source, d.clearing_message_id, sum(d.amount_minor)
               FROM disputes d JOIN unnest($1::text[], $2::text[])
                 AS k(clearing_source, clearing_message_id)
                 USING (clearing_source, clearing_message_id)
               WHERE d.status <> 'MERCHANT_WON'
               GROUP BY d.clearing_source, d.clearing_message_id""",
            sources,
            message_ids,
        )
        claimed = {(r[0], r[1]): int(r[2]) for r in rows}
    conflicts: set[int] = set()
    for index, write in writes:
        trial_status: dict[str, str] = {}
        trial_claimed: dict[tuple[str, str], int] = {}
        ok = True
        for change in write.disputes:
            current = trial_status.get(change.dispute_id, status.get(change.dispute_id))
            if change.opening is not None:
                key = (change.opening.clearing_source, change.opening.clearing_message_id)
                total = trial_claimed.get(key, claimed.get(key, 0)) + change.amount_minor
                if current is not None or total > change.opening.cleared_minor:
                    ok = False
                    break
                trial_claimed[key] = total
            elif current != change.from_status:
                ok = False
                break
            trial_status[change.dispute_id] = change.to_status
        if ok:
            status.update(trial_status)
            claimed.update(trial_claimed)
        else:
            conflicts.add(index)
    return conflicts


async def _write_disputes(conn: Connection, changes: list[DisputeChange]) -> None:
    if not changes:
        return
    openings = [(c, c.opening) for c in changes if c.opening is not None]
    if openings:
        await conn.execute(
            """INSERT INTO disputes (id, program_id, account_id, card_id, clearing_source,
                   clearing_message_id, network_reference, asset, amount_minor, reason_code,
                   status, provisional_minor, on_ledger, created_at, updated_at)
               SELECT id, program_id, account_id, card_id, clearing_source,
                      clearing_message_id, network_reference, asset, amount, reason_code,
                      status, provisional, on_ledger, at, at
               FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                           $6::text[], $7::text[], $8::text[], $9::int8[], $10::text[],
                           $11::text[], $12::int8[], $13::bool[], $14::timestamptz[])
                 AS n(id, program_id, account_id, card_id, clearing_source,
                      clearing_message_id, network_reference, asset, amount, reason_code,
                      status, provisional, on_ledger, at)""",
            [c.dispute_id for c, _ in openings],
            [o.program_id for _, o in openings],
            [o.account_id for _, o in openings],
            [o.card_id for _, o in openings],
            [o.clearing_source for _, o in openings],
            [o.clearing_message_id for _, o in openings],
            [o.network_reference for _, o in openings],
            [o.asset for _, o in openings],
            [c.amount_minor for c, _ in openings],
            [o.reason_code for _, o in openings],
            [c.to_status for c, _ in openings],
            [c.provisional_minor for c, _ in openings],
            [o.on_ledger for _, o in openings],
            [c.at for c, _ in openings],
        )
    # Several steps of one dispute in a batch were replayed in order: the last one stands.
    latest = {c.dispute_id: c for c in changes if c.opening is None}
    if latest:
        steps = list(latest.values())
        await conn.execute(
            """UPDATE disputes d SET status = u.status, provisional_minor = u.provisional,
                   updated_at = u.at
               FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::timestamptz[])
                 AS u(id, status, provisional, at)
               WHERE d.id = u.id""",
            [c.dispute_id for c in steps],
            [c.to_status for c in steps],
            [c.provisional_minor for c in steps],
            [c.at for c in steps],
        )
    await conn.execute(
        """INSERT INTO dispute_events (dispute_id, step, from_status, to_status, amount_minor,
               entry_id, source, message_id, detail, created_at)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[],
                                $6::uuid[], $7::text[], $8::text[], $9::jsonb[],
                                $10::timestamptz[])""",
        [c.dispute_id for c in changes],
        [c.step for c in changes],
        [c.from_status or "" for c in changes],
        [c.to_status for c in changes],
        [c.amount_minor for c in changes],
        [c.entry_id for c in changes],
        [c.source for c in changes],
        [c.message_id for c in changes],
        [json.dumps(c.detail) for c in changes],
        [c.at for c in changes],
    )


async def _write_usage(conn: Connection, changes: list[UsageChange]) -> None:
    if not changes:
        return
    totals: dict[tuple[str, str], list[Any]] = {}
    for change in changes:
        total = totals.setdefault((change.account_id, change.key), [0, 0, change.expires_at])
        total[0] += change.amount_minor
        total[1] += change.count
        total[2] = max(total[2], change.expires_at)
    await conn.execute(
        """INSERT INTO limit_usage AS u (account_id, key, amount_minor, count, expires_at)
           SELECT * FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::int4[],
                                $5::timestamptz[])
           ON CONFLICT (account_id, key) DO UPDATE SET
               amount_minor = u.amount_minor + EXCLUDED.amount_minor,
               count = u.count + EXCLUDED.count,
               expires_at = GREATEST(u.expires_at, EXCLUDED.expires_at)""",
        [k[0] for k in totals],
        [k[1] for k in totals],
        [v[0] for v in totals.values()],
        [v[1] for v in totals.values()],
        [v[2] for v in totals.values()],
    )


def _conversion_row(record: ConversionRecord) -> tuple[object, ...]:
    c = record.conversion
    return (
        record.source, record.message_id, record.kind, c.billing_asset, c.billing_minor,
        c.account_asset, c.account_minor, c.markup_minor, c.rate_text, c.rate_effective_from,
        record.created_at,
    )  # fmt: skip


async def _write_conversions(conn: Connection, records: list[ConversionRecord]) -> None:
    if not records:
        return
    await conn.executemany(
        """INSERT INTO fx_conversions (source, message_id, kind, billing_asset, billing_minor,
               account_asset, account_minor, markup_minor, rate, rate_effective_from,
               created_at)
           VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)""",
        [_conversion_row(r) for r in records],
    )


async def _write_client_calls(conn: Connection, calls: list[ClientCall]) -> None:
    if not calls:
        return
    await conn.execute(
        """INSERT INTO client_calls (source, message_id, program_id, outcome, stand_in_reason,
               stand_in_policy, client_decision, client_response_code, client_reason,
               latency_us, created_at, usage_minor, usage_keys, network_reference)
           SELECT s, m, p, o, r, sp, cd, cr, cx, l, t, um,
                  coalesce(string_to_array(nullif(uk, ''), ' '), '{}'), nr
           FROM unnest($1::text[], $2::text[], $3::uuid[], $4::text[], $5::text[],
                       $6::text[], $7::text[], $8::text[], $9::text[], $10::int4[],
                       $11::timestamptz[], $12::int8[], $13::text[], $14::text[])
                AS u(s, m, p, o, r, sp, cd, cr, cx, l, t, um, uk, nr)""",
        [k.source for k in calls],
        [k.message_id for k in calls],
        [k.program_id for k in calls],
        [k.outcome for k in calls],
        [k.stand_in_reason for k in calls],
        [k.stand_in_policy for k in calls],
        [k.client_decision for k in calls],
        [k.client_response_code for k in calls],
        [k.client_reason for k in calls],
        [k.latency_us for k in calls],
        [k.created_at for k in calls],
        [k.usage_minor for k in calls],
        [" ".join(k.usage_keys) for k in calls],
        [k.network_reference for k in calls],
    )


async def write_notifications(conn: Connection, notifications: list[Notification]) -> None:
    """The outbox rows, and one delivery per sink, ordered per account by ``seq``."""
    if not notifications:
        return
    deliveries = [(n, sink) for n in notifications for sink in n.sinks]
    # One statement: the notifications, and their deliveries with the seq each was given.
    await conn.execute(
        """WITH n AS (
               INSERT INTO notifications (id, program_id, account_id, card_id, kind, payload,
                   created_at)
               SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::uuid[], $5::text[],
                                    $6::jsonb[], $7::timestamptz[])
               RETURNING id, program_id, seq, created_at
           )
           INSERT INTO notification_deliveries (notification_id, sink, program_id,
               ordering_key, seq, next_attempt_at, created_at)
           SELECT n.id, d.sink, n.program_id, d.ordering_key, n.seq, n.created_at, n.created_at
           FROM unnest($8::uuid[], $9::text[], $10::text[]) AS d(id, sink, ordering_key)
           JOIN n ON n.id = d.id""",
        [n.id for n in notifications],
        [n.program_id for n in notifications],
        [n.account_id for n in notifications],
        [n.card_id for n in notifications],
        [n.kind for n in notifications],
        [json.dumps(n.payload, sort_keys=True) for n in notifications],
        [n.created_at for n in notifications],
        [n.id for n, _ in deliveries],
        [sink for _, sink in deliveries],
        [n.account_id or n.card_id or n.program_id for n, _ in deliveries],
    )


async def _insert_hold_events(
    conn: Connection, events: list[tuple[str, str, str, str, int, datetime]]
) -> None:
    await conn.execute(
        """INSERT INTO hold_events (hold_id, account_id, asset, kind, amount_minor, at)
           SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[],
                                $6::timestamptz[])""",
        [e[0] for e in events],
        [e[1] for e in events],
        [e[2] for e in events],
        [e[3] for e in events],
        [e[4] for e in events],
        [e[5] for e in events],
    )


# The statements of _apply_effects, in the order it runs them.
# A hold's key goes into hold_keys (the global arbiter of hold keys: holds is partitioned, so it
# cannot have a unique key on them), taking over a tombstone an earlier reversal left there,
# and the hold is written already reduced by what that reversal took: one statement.
_INSERT_HOLDS = f"""
    WITH h AS (
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::uuid[],
                             $5::text[], $6::text[], $7::text[], $8::int8[],
                             $9::int8[], $10::timestamptz[], $11::timestamptz[],
                             $12::text[], $13::text[], $14::int8[])
            AS h(id, account_id, asset, card_id, source, message_id,
                 network_reference, amount, fee, expires_at, created_at, kind,
                 usage_keys, billing)
    ), k AS (
        {HOLD_KEYS}
    ), r AS (
        -- What the early reversal asked for, in the hold's asset: of a converted
        -- hold (docs/fx.md) its share, the reversal being in the billing asset
        -- (rounded half up, as domain/fx.share_of).
        SELECT h.*, k.early, k.reversal_full,
               CASE WHEN h.billing > 0
                    THEN round(h.amount::numeric * k.reversed_minor / h.billing)::int8
                    ELSE k.reversed_minor END AS asked
        FROM h JOIN k USING (source, message_id)
    ), w AS (
        SELECT r.*, LEAST(asked, amount) AS reversed,
               early AND (reversal_full OR amount <= asked) AS ended,
               CASE WHEN reversal_full THEN amount
                    ELSE LEAST(asked, amount) END AS taken
        FROM r
    )
    INSERT INTO holds (id, account_id, asset, card_id, source, message_id,
        network_reference, amount_minor, original_minor, reversed_minor, fee_minor,
        status, expires_at, created_at, ended_at, end_reason, kind, usage_keys)
    SELECT id, account_id, asset, card_id, source, message_id, network_reference,
           amount - taken, amount, reversed, fee,
           CASE WHEN ended THEN 'REVERSED' ELSE 'OPEN' END, expires_at,
           created_at, CASE WHEN ended THEN created_at END,
           CASE WHEN ended THEN 'REVERSAL' ELSE '' END, kind,
           coalesce(string_to_array(nullif(usage_keys, ''), ' '), '{{}}')
    FROM w
    RETURNING source, message_id, amount_minor
"""  # noqa: S608 - the text is this module's and onestatement's constants only
_RELEASE_HOLDS = """
    UPDATE holds h
    SET amount_minor = h.amount_minor - r.release,
        reversed_minor = h.reversed_minor
            + CASE WHEN r.reason = 'REVERSAL' THEN r.release ELSE 0 END,
        cleared_minor = h.cleared_minor
            + CASE WHEN r.reason = 'CLEARING' THEN r.release ELSE 0 END,
        status = CASE WHEN h.amount_minor = r.release THEN r.end_status ELSE 'OPEN' END,
        ended_at = CASE WHEN h.amount_minor = r.release THEN r.at END,
        end_reason = CASE WHEN h.amount_minor = r.release THEN r.reason ELSE '' END
    FROM unnest($1::uuid[], $2::int8[], $3::int8[], $4::text[], $5::text[],
                $6::timestamptz[])
         AS r(id, expected, release, end_status, reason, at)
    WHERE h.id = r.id AND h.status = 'OPEN' AND h.amount_minor = r.expected
"""
_INSERT_TOMBSTONES = """
    INSERT INTO hold_keys AS t (source, message_id, reversed_minor, reversal_full,
        tombstone_at)
    SELECT source, message_id, reversed, full_, at
    FROM unnest($1::text[], $2::text[], $3::int8[], $4::bool[], $5::timestamptz[])
         AS k(source, message_id, reversed, full_, at)
    ON CONFLICT (source, message_id) DO UPDATE SET
        reversed_minor = t.reversed_minor + EXCLUDED.reversed_minor,
        reversal_full = t.reversal_full OR EXCLUDED.reversal_full
    WHERE t.hold_id IS NULL
    RETURNING t.message_id
"""
_UPDATE_BALANCES = """
    UPDATE balances b
    SET actual_minor = b.actual_minor + d.actual_delta,
        authorized_minor = b.authorized_minor + d.authorized_delta
    FROM unnest($1::uuid[], $2::text[], $3::int8[], $4::int8[])
         AS d(account_id, asset, actual_delta, authorized_delta)
    WHERE b.account_id = d.account_id AND b.asset = d.asset
"""
_INSERT_ENTRIES = """
    INSERT INTO journal_entries (id, program_id, kind, source, message_id,
        description, created_at, network_reference, card_id)
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::timestamptz[], $8::text[], $9::uuid[])
"""
_INSERT_POSTINGS = """
    INSERT INTO postings (entry_id, account_id, asset, amount_minor, created_at)
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::int8[],
                         $5::timestamptz[])
"""
_UPDATE_CARDS = """
    UPDATE cards c
    SET pin_tries = COALESCE(u.pin_tries, c.pin_tries),
        pvv = COALESCE(u.pvv, c.pvv),
        status = CASE WHEN u.blocked AND c.status = 'ACTIVE' THEN 'BLOCKED'
                      ELSE c.status END,
        updated_at = now()
    FROM unnest($1::uuid[], $2::int2[], $3::bytea[], $4::bool[])
         AS u(id, pin_tries, pvv, blocked)
    WHERE c.id = u.id
"""


async def _apply_effects(conn: Connection, writes: list[LedgerWrite]) -> dict[int, int]:
    """Apply the effects of admitted writes; returns, by position in ``writes``, what
    tombstones had already reversed of the holds they create."""
    deltas: dict[tuple[str, str], list[int]] = {}
    for write in writes:
        for change in write.balance_changes:
            delta = deltas.setdefault(change.key, [0, 0])
            delta[0] += change.actual_delta_minor
            delta[1] += change.authorized_delta_minor
    pre_reversed = await _insert_holds(conn, writes, deltas)
    await _release_holds(conn, [r for w in writes for r in w.releases])
    await _insert_tombstones(conn, [t for w in writes for t in w.tombstones])
    await _update_balances(conn, {k: v for k, v in deltas.items() if v != [0, 0]})
    await _insert_entries(conn, [e for w in writes for e in w.entries])
    await _write_usage(conn, [u for w in writes for u in w.usage])
    await _write_client_calls(conn, [k for w in writes for k in w.client_calls])
    await _write_conversions(conn, [c for w in writes for c in w.conversions])
    await write_notifications(conn, [n for w in writes for n in w.notifications])
    await _write_disputes(conn, [d for w in writes for d in w.disputes])
    await _update_cards(conn, writes)
    return pre_reversed


async def _insert_holds(
    conn: Connection, writes: list[LedgerWrite], deltas: dict[tuple[str, str], list[int]]
) -> dict[int, int]:
    """Write the batch's new holds (each taking over its early reversal's tombstone, if
    any); takes what those reversals took off ``deltas`` and returns it by write."""
    pre_reversed: dict[int, int] = {}
    hold_owner = [(position, h) for position, w in enumerate(writes) for h in w.holds]
    if not hold_owner:
        return pre_reversed
    holds = [h for _, h in hold_owner]
    rows = await conn.fetch(
        _INSERT_HOLDS,
        [h.id for h in holds],
        [h.account_id for h in holds],
        [h.asset for h in holds],
        [h.card_id for h in holds],
        [h.source for h in holds],
        [h.message_id for h in holds],
        [h.network_reference for h in holds],
        [h.amount_minor for h in holds],
        [h.fee_minor for h in holds],
        [h.expires_at for h in holds],
        [h.created_at for h in holds],
        [h.kind for h in holds],
        # text[][] cannot be unnested into rows of arrays: keys travel space-joined.
        [" ".join(h.usage_keys) for h in holds],
        [h.billing_minor for h in holds],
    )
    assert len(rows) == len(holds), "a hold key was taken by a hold, not a tombstone"
    final = {(r[0], r[1]): r[2] for r in rows}
    early: list[tuple[str, str, str, int, datetime]] = []
    for position, hold in hold_owner:
        taken = hold.amount_minor - final[(hold.source, hold.message_id)]
        if taken:
            pre_reversed[position] = pre_reversed.get(position, 0) + taken
            deltas[(hold.account_id, hold.asset)][1] -= taken
            early.append((hold.id, hold.account_id, hold.asset, taken, hold.created_at))
    if early:
        await _insert_hold_events(conn, [(*e[:3], "REVERSAL", e[3], e[4]) for e in early])
    return pre_reversed


async def _release_holds(conn: Connection, releases: list[HoldRelease]) -> None:
    if not releases:
        return
    status = await conn.execute(
        _RELEASE_HOLDS,
        [r.plan.hold_id for r in releases],
        [r.plan.expected_minor for r in releases],
        [r.plan.release_minor for r in releases],
        [r.plan.end.value for r in releases],
        [r.reason for r in releases],
        [r.at for r in releases],
    )
    # _check_holds lets one release per hold into a batch, so each row updates once.
    assert status == f"UPDATE {len(releases)}", f"hold releases lost: {status}"
    await _insert_hold_events(
        conn,
        [
            (r.plan.hold_id, r.account_id, r.asset, r.reason, r.plan.release_minor, r.at)
            for r in releases
        ],
    )


async def _insert_tombstones(conn: Connection, tombstones: list[Tombstone]) -> None:
    if not tombstones:
        return
    rows = await conn.fetch(
        _INSERT_TOMBSTONES,
        [t.source for t in tombstones],
        [t.message_id for t in tombstones],
        [t.reversed_minor for t in tombstones],
        [t.full for t in tombstones],
        [t.at for t in tombstones],
    )
    if len(rows) != len(tombstones):
        # Another process wrote the original's hold after our check: abort the batch;
        # every write in it is retried or answered 96, nothing half-done survives.
        raise StoreUnavailable("a tombstone raced with its original's hold")


async def _update_balances(conn: Connection, deltas: dict[tuple[str, str], list[int]]) -> None:
    if not deltas:
        return
    status = await conn.execute(
        _UPDATE_BALANCES,
        [k[0] for k in deltas],
        [k[1] for k in deltas],
        [v[0] for v in deltas.values()],
        [v[1] for v in deltas.values()],
    )
    assert status == f"UPDATE {len(deltas)}", f"balance rows missing: {status}"


async def _insert_entries(conn: Connection, entries: list[JournalEntry]) -> None:
    if not entries:
        return
    await conn.execute(
        _INSERT_ENTRIES,
        [e.id for e in entries],
        [e.program_id for e in entries],
        [e.kind for e in entries],
        [e.source for e in entries],
        [e.message_id for e in entries],
        [e.description for e in entries],
        [e.created_at for e in entries],
        [e.network_reference for e in entries],
        [e.card_id for e in entries],
    )
    postings = [(e, p) for e in entries for p in e.postings]
    await conn.execute(
        _INSERT_POSTINGS,
        [e.id for e, _ in postings],
        [p.account_id for _, p in postings],
        [p.asset for _, p in postings],
        [p.amount_minor for _, p in postings],
        [e.created_at for e, _ in postings],
    )


async def _update_cards(conn: Connection, writes: list[LedgerWrite]) -> None:
    """The batch's card updates, merged per card (the later's fields over the earlier's)."""
    merged: dict[str, CardUpdate] = {}
    for write in writes:
        for update in write.card_updates:
            before = merged.get(update.card_id)
            if before is None:
                merged[update.card_id] = update
            else:
                merged[update.card_id] = CardUpdate(
                    update.card_id,
                    update.pin_tries if update.pin_tries is not None else before.pin_tries,
                    update.pvv if update.pvv is not None else before.pvv,
                    update.blocked or before.blocked,
                )
    if not merged:
        return
    updates = list(merged.values())
    await conn.execute(
        _UPDATE_CARDS,
        [u.card_id for u in updates],
        [u.pin_tries for u in updates],
        [u.pvv for u in updates],
        [u.blocked for u in updates],
    )
