"""The reads behind report files (service/reports.py), and the rows that schedule them: the
daily balance reports' runs and the intraday subledger syncs' windows.

A report reads one consistent snapshot (``ReportStore.snapshot``: a single repeatable-read,
read-only transaction), streamed from server-side cursors so that a million accounts never
sit in memory at once.

Reports may read from a replica (``AUTHSWITCH_REPORTS_POSTGRES_DSN``): the store's ``pool``
is then the replica's and ``primary`` the main one, where the runs and windows are written.
A replica lags, and a day file written from a snapshot that misses the day's last commits
would be wrong for good, so before each snapshot the store waits until the replica has
replayed the primary's WAL as of the moment the report began (when the replica is a hot
standby; any other DSN is taken as current).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta
from time import monotonic
from typing import Any, Literal

import asyncpg

from authswitch.adapters.postgres.errors import translated_methods
from authswitch.adapters.postgres.ownership import OwnerBalance, owner_balances
from authswitch.adapters.postgres.pool import Connection
from authswitch.domain.reports import (
    BalanceRow,
    ChargebackEvent,
    MessageCount,
    NetChange,
    PostingCount,
    ReportProgram,
    ReportSubscription,
    SettlementProgram,
    SyncWindow,
    TransactionLine,
)
from authswitch.errors import StoreUnavailable

__all__ = ["ReportSnapshot", "ReportStore"]

CURSOR_PREFETCH = 1_000
# How long a report waits for a replica to catch up with the primary before it fails (and is
# retried by its job); and how often it looks.
REPLICA_CATCH_UP_MAX_S = 60.0
REPLICA_POLL_S = 0.1
# A posting that commits this long after the time it carries may be missed by a subledger
# sync (a group commit takes milliseconds; a stalled one fails long before this).
SYNC_LATE_COMMIT_MAX = timedelta(hours=24)


_BALANCES = """
    SELECT p.client_id::text, acc.program_id::text, acc.product_id::text,
           coalesce(acc.profile_id::text, ''), acc.id::text, acc.account_type, acc.name,
           acc.reference, b.asset, a.numeric_code, a.category, a.exponent,
           p.mode = 'ON_LEDGER', b.is_base, b.actual_minor, b.authorized_minor
    FROM balances b
    JOIN accounts acc ON acc.id = b.account_id
    JOIN programs p ON p.id = acc.program_id
    JOIN assets a ON a.code = b.asset
    WHERE p.client_id = $1 AND acc.kind = 'CUSTOMER'
    ORDER BY acc.id, b.is_base DESC, b.asset
"""
_NET_CHANGES = """
    SELECT p.account_id::text, acc.reference, p.asset, a.exponent, sum(p.amount_minor) AS net
    FROM postings p
    JOIN accounts acc ON acc.id = p.account_id
    JOIN assets a ON a.code = p.asset
    WHERE acc.program_id = $1 AND acc.kind = 'CUSTOMER'
      AND p.created_at >= $2 AND p.created_at < $3
    GROUP BY p.account_id, acc.reference, p.asset, a.exponent
    HAVING sum(p.amount_minor) <> 0
    ORDER BY p.account_id, p.asset"""
# The customer postings of a sync window ($1 program): posted from $2 (the previous window's
# end, less SYNC_LATE_COMMIT_MAX) to before $3 (this window's end), visible in this window's
# snapshot $4 and not in the previous file, which held those before $5 visible in $6.
# Postings written before migration 0012 have no transaction id: older than any snapshot.
_SYNC_NET_CHANGES = """
    SELECT p.account_id::text, acc.reference, p.asset, a.exponent,
           sum(p.amount_minor) AS net
    FROM journal_entries e
    JOIN postings p ON p.entry_id = e.id AND p.created_at = e.created_at
    JOIN accounts acc ON acc.id = p.account_id
    JOIN assets a ON a.code = p.asset
    WHERE e.program_id = $1 AND e.created_at >= $2 AND e.created_at < $3
      AND acc.kind = 'CUSTOMER'
      AND coalesce(pg_visible_in_snapshot(p.xact, $4::text::pg_snapshot), true)
      AND NOT (p.created_at < $5
               AND coalesce(pg_visible_in_snapshot(p.xact, $6::text::pg_snapshot), true))
    GROUP BY p.account_id, acc.reference, p.asset, a.exponent
    HAVING sum(p.amount_minor) <> 0
    ORDER BY p.account_id, p.asset"""
_TRANSACTION_LINES = """
    SELECT e.id::text, e.created_at, e.kind, p.account_id::text, acc.kind, acc.reference,
           coalesce(c.last_four, ''), p.asset, a.exponent, p.amount_minor, e.source,
           e.message_id, e.network_reference, e.description, coalesce(x.billing_asset, ''),
           xa.exponent, x.billing_minor, coalesce(x.rate, '')
    FROM journal_entries e
    JOIN postings p ON p.entry_id = e.id
    JOIN accounts acc ON acc.id = p.account_id
    JOIN assets a ON a.code = p.asset
    LEFT JOIN cards c ON c.id = e.card_id
    LEFT JOIN fx_conversions x ON x.source = e.source AND x.message_id = e.message_id
    LEFT JOIN assets xa ON xa.code = x.billing_asset
    WHERE e.program_id = $1 AND e.created_at >= $2 AND e.created_at < $3
    ORDER BY e.created_at, e.source, e.message_id, e.kind = 'FEE', e.id,
             acc.kind <> 'CUSTOMER', acc.kind, p.account_id, p.asset"""
_CHARGEBACK_EVENTS = """
    SELECT ev.id, ev.created_at, d.id::text, ev.step, ev.from_status, ev.to_status,
           d.reason_code, a.exponent, ev.amount_minor, d.asset, d.account_id::text,
           coalesce(c.last_four, ''), d.clearing_source, d.clearing_message_id,
           d.network_reference, coalesce(ev.entry_id::text, ''), ev.source, ev.message_id
    FROM dispute_events ev
    JOIN disputes d ON d.id = ev.dispute_id
    JOIN assets a ON a.code = d.asset
    LEFT JOIN cards c ON c.id = d.card_id
    WHERE d.program_id = $1 AND ev.created_at >= $2 AND ev.created_at < $3
    ORDER BY ev.created_at, ev.id"""
_SETTLEMENT_PROGRAM = """
    SELECT p.time_zone, p.mode = 'ON_LEDGER' OR coalesce(r.stand_in = 'SHADOW', false),
           (SELECT id::text FROM accounts WHERE program_id = p.id AND kind = 'CLEARING'),
           (SELECT id::text FROM accounts WHERE program_id = p.id AND kind = 'FEE_INCOME')
    FROM programs p LEFT JOIN program_routing r ON r.program_id = p.id
    WHERE p.id = $1"""
# The cleared messages of a program's day by network, asset and kind, but those of $4.
_CLEARED_MESSAGES = """
    SELECT d.source, d.asset, d.kind, count(*), sum(d.amount_minor)
    FROM decisions d JOIN accounts acc ON acc.id = d.account_id
    WHERE d.kind IN ('CLEARING', 'REFUND', 'CREDIT') AND d.response_code = '00'
      AND d.created_at >= $2 AND d.created_at < $3
      AND acc.program_id = $1 AND d.asset IS NOT NULL
      AND d.source <> $4
    GROUP BY d.source, d.asset, d.kind"""
# The dispute steps that move money between a program and a network: a chargeback, its
# representment, and the cardholder's win in arbitration after a representment.
_DISPUTE_STEPS = """
    SELECT d.clearing_source, d.asset,
           CASE WHEN ev.step = 'CARDHOLDER_WON' THEN 'ARBITRATION' ELSE ev.step END,
           count(*), sum(ev.amount_minor)
    FROM dispute_events ev JOIN disputes d ON d.id = ev.dispute_id
    WHERE d.program_id = $1 AND ev.created_at >= $2 AND ev.created_at < $3
      AND (ev.step IN ('CHARGEBACK', 'REPRESENTMENT')
           OR (ev.step = 'CARDHOLDER_WON' AND ev.from_status = 'REPRESENTED'))
    GROUP BY 1, 2, 3"""
# One account's postings of a day, by the entry's source or kind ($5), and asset.
_ACCOUNT_DAY = """
    SELECT CASE WHEN $5 = 'kind' THEN e.kind ELSE e.source END, p.asset, count(*),
           sum(p.amount_minor)
    FROM postings p JOIN journal_entries e ON e.id = p.entry_id
    WHERE p.account_id = $1 AND e.program_id = $2
      AND p.created_at >= $3 AND p.created_at < $4 AND e.created_at >= $3 AND e.created_at < $4
    GROUP BY 1, 2"""
# An account's balance at a time: its postings before it (and what months dropped by
# retention summed to).
_CLOSING_BALANCES = """
    SELECT asset, sum(amount_minor) FROM (
        SELECT asset, amount_minor FROM postings
        WHERE account_id = $1 AND created_at < $2
        UNION ALL
        SELECT asset, amount_minor FROM posting_archive_totals
        WHERE account_id = $1) t
    GROUP BY asset"""


@translated_methods
class ReportSnapshot:
    """The reads of one report, on one connection in a repeatable-read, read-only
    transaction; the streams read from server-side cursors."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    async def client_exists(self, client_id: str) -> bool:
        return bool(await self.conn.fetchval("SELECT true FROM clients WHERE id = $1", client_id))

    async def program(self, program_id: str) -> ReportProgram | None:
        row = await self.conn.fetchrow(
            "SELECT name, time_zone FROM programs WHERE id = $1", program_id
        )
        return None if row is None else ReportProgram(row[0], row[1])

    async def count_customer_balances(self, client_id: str) -> int:
        return int(
            await self.conn.fetchval(
                """SELECT count(*) FROM balances b JOIN accounts acc ON acc.id = b.account_id
                   JOIN programs p ON p.id = acc.program_id
                   WHERE p.client_id = $1 AND acc.kind = 'CUSTOMER'""",
                client_id,
            )
        )

    async def customer_balances(self, client_id: str) -> AsyncIterator[BalanceRow]:
        """Every balance of the client's customer accounts, by account (base asset first)."""
        async for row in self.conn.cursor(_BALANCES, client_id, prefetch=CURSOR_PREFETCH):
            yield BalanceRow(*row)

    async def net_changes(
        self, program_id: str, start: datetime, end: datetime
    ) -> AsyncIterator[NetChange]:
        """The net change of each customer account (and asset) posted from ``start`` to
        before ``end``, but those that came to nothing; by account and asset."""
        async for row in self.conn.cursor(
            _NET_CHANGES, program_id, start, end, prefetch=CURSOR_PREFETCH
        ):
            yield NetChange(row[0], row[1], row[2], row[3], int(row["net"]))

    async def current_snapshot(self) -> str:
        """This transaction's snapshot (``pg_snapshot`` as text)."""
        return str(await self.conn.fetchval("SELECT pg_current_snapshot()::text"))

    async def sync_net_changes(
        self,
        program_id: str,
        *,
        previous: SyncWindow,
        window_end: datetime,
        snapshot: str,
    ) -> AsyncIterator[NetChange]:
        """The net change of each customer account (and asset) of a subledger sync's file:
        the postings before ``window_end`` visible in ``snapshot`` that the previous file
        (``previous``) did not hold."""
        async for row in self.conn.cursor(
            _SYNC_NET_CHANGES, program_id, previous.window_end - SYNC_LATE_COMMIT_MAX,
            window_end, snapshot, previous.window_end, previous.snapshot,
            prefetch=CURSOR_PREFETCH,
        ):  # fmt: skip
            yield NetChange(row[0], row[1], row[2], row[3], int(row["net"]))

    def owner_balances(self, program_id: str) -> AsyncIterator[OwnerBalance]:
        return owner_balances(self.conn, program_id, prefetch=CURSOR_PREFETCH)

    async def transaction_lines(
        self, program_id: str, start: datetime, end: datetime
    ) -> AsyncIterator[TransactionLine]:
        """Every posting of every journal entry the program posted from ``start`` to before
        ``end``: by entry (its fee lines after it), customer accounts first."""
        async for row in self.conn.cursor(
            _TRANSACTION_LINES, program_id, start, end, prefetch=CURSOR_PREFETCH
        ):
            yield TransactionLine(*row)

    async def chargeback_events(
        self, program_id: str, start: datetime, end: datetime
    ) -> AsyncIterator[ChargebackEvent]:
        """Every step any dispute of the program took from ``start`` to before ``end``."""
        async for row in self.conn.cursor(
            _CHARGEBACK_EVENTS, program_id, start, end, prefetch=CURSOR_PREFETCH
        ):
            yield ChargebackEvent(*row)

    async def settlement_program(self, program_id: str) -> SettlementProgram | None:
        row = await self.conn.fetchrow(_SETTLEMENT_PROGRAM, program_id)
        return None if row is None else SettlementProgram(*row)

    async def cleared_messages(
        self, program_id: str, start: datetime, end: datetime, *, excluding_source: str
    ) -> list[MessageCount]:
        """The approved clearings, refunds and credits of the program's accounts from
        ``start`` to before ``end``, by network (their source), asset and kind."""
        rows = await self.conn.fetch(_CLEARED_MESSAGES, program_id, start, end, excluding_source)
        return [MessageCount(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows]

    async def dispute_steps(
        self, program_id: str, start: datetime, end: datetime
    ) -> list[MessageCount]:
        """The chargebacks, representments and arbitrations (a cardholder's win after a
        representment) from ``start`` to before ``end``, by the disputed clearing's network,
        asset and step."""
        rows = await self.conn.fetch(_DISPUTE_STEPS, program_id, start, end)
        return [MessageCount(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in rows]

    async def account_postings(
        self,
        account_id: str | None,
        program_id: str,
        start: datetime,
        end: datetime,
        *,
        by: Literal["kind", "source"],
    ) -> list[PostingCount]:
        """One account's postings from ``start`` to before ``end``, by the entry's kind or
        source, and asset (none for a missing account)."""
        rows = await self.conn.fetch(_ACCOUNT_DAY, account_id, program_id, start, end, by)
        return [PostingCount(r[0], r[1], int(r[2]), int(r[3])) for r in rows]

    async def closing_balances(self, account_id: str | None, at: datetime) -> dict[str, int]:
        """An account's balance per asset at ``at``."""
        rows = await self.conn.fetch(_CLOSING_BALANCES, account_id, at)
        return {r[0]: int(r[1]) for r in rows}

    async def exponents(self) -> dict[str, int]:
        """Every asset's exponent."""
        return {r[0]: r[1] for r in await self.conn.fetch("SELECT code, exponent FROM assets")}


@translated_methods
class ReportStore:
    """Snapshots of ``pool`` for reports; ``primary`` (default: the same pool) is where the
    writes happen, when ``pool`` is a read replica."""

    def __init__(
        self, pool: asyncpg.Pool[Any], *, primary: asyncpg.Pool[Any] | None = None
    ) -> None:
        self.pool = pool
        self.primary = primary or pool

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[ReportSnapshot]:
        """A snapshot that sees at least every commit the primary had made when it was asked
        for."""
        async with self.pool.acquire() as conn:
            if self.primary is not self.pool:
                await self._caught_up(conn)
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                yield ReportSnapshot(conn)

    async def _caught_up(self, conn: Any) -> None:
        if not await conn.fetchval("SELECT pg_is_in_recovery()"):
            return  # not a standby: what it shows is current
        target = await self.primary.fetchval("SELECT pg_current_wal_lsn()::text")
        deadline = monotonic() + REPLICA_CATCH_UP_MAX_S
        while not await conn.fetchval(
            "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)", target
        ):
            if monotonic() > deadline:
                raise StoreUnavailable(
                    f"the reports replica has not replayed the primary's WAL up to {target} "
                    f"within {REPLICA_CATCH_UP_MAX_S:.0f}s"
                )
            await asyncio.sleep(REPLICA_POLL_S)

    async def previous_window(self, schedule_id: str, window_end: datetime) -> SyncWindow | None:
        """The last window of a subledger sync schedule before ``window_end`` (on the
        primary, where the windows are written)."""
        row = await self.primary.fetchrow(
            """SELECT window_end, snapshot::text FROM subledger_sync_windows
               WHERE schedule_id = $1 AND window_end < $2
               ORDER BY window_end DESC LIMIT 1""",
            schedule_id, window_end,
        )  # fmt: skip
        return None if row is None else SyncWindow(row[0], row[1])

    async def record_window(self, schedule_id: str, window_end: datetime, snapshot: str) -> str:
        """Keep the snapshot a window's file is written from, the first time it is written;
        returns the window's snapshot (an earlier attempt's, if any)."""
        kept = await self.primary.fetchval(
            """INSERT INTO subledger_sync_windows (schedule_id, window_end, snapshot, taken_at)
               VALUES ($1, $2, $3::text::pg_snapshot, now())
               ON CONFLICT (schedule_id, window_end)
               DO UPDATE SET taken_at = subledger_sync_windows.taken_at
               RETURNING snapshot::text""",
            schedule_id, window_end, snapshot,
        )  # fmt: skip
        return str(kept)

    async def subscriptions(self) -> list[ReportSubscription]:
        """The clients subscribed to the daily balance report."""
        rows = await self.primary.fetch(
            "SELECT client_id::text, prefix FROM report_subscriptions WHERE enabled"
        )
        return [ReportSubscription(r[0], r[1]) for r in rows]

    async def claim_run(self, client_id: str, day: date, at: datetime) -> bool:
        """Claim a client's balance report of ``day``: not when it is written, nor while
        another claim of it is less than an hour old."""
        claimed = await self.primary.fetchval(
            """INSERT INTO report_runs (kind, subject, day, started_at)
               VALUES ('balances', $1, $2, $3)
               ON CONFLICT (kind, subject, day) DO UPDATE SET started_at = EXCLUDED.started_at
               WHERE report_runs.finished_at IS NULL
                 AND report_runs.started_at < EXCLUDED.started_at - interval '1 hour'
               RETURNING true""",
            client_id,
            day,
            at,
        )
        return bool(claimed)

    async def finish_run(
        self, client_id: str, day: date, *, file_name: str, records: int, at: datetime
    ) -> None:
        await self.primary.execute(
            """UPDATE report_runs SET file_name = $3, records = $4, finished_at = $5
               WHERE kind = 'balances' AND subject = $1 AND day = $2""",
            client_id,
            day,
            file_name,
            records,
            at,
        )
