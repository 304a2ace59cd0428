"""Report files: seed 003's daily account balance report and seed 002's sponsor-bank files
(the subledger net-change file, the pooled FBO balance file, and the daily transaction and
chargeback files every partner-managed program owes; formats in docs/files.md).

Each report is one consistent snapshot (a single repeatable-read, read-only transaction),
streamed from a server-side cursor so that a million accounts never sit in memory at once,
and written through a sink that only shows the file once it is complete.

Reports may read from a replica (``AUTHSWITCH_REPORTS_POSTGRES_DSN``): the writer's ``pool``
is then the replica's and ``primary`` the main one. A replica lags, and a day file written
from a snapshot that misses the day's last commits would be wrong for good, so before each
snapshot the writer waits until the replica has replayed the primary's WAL as of the moment
the report began (when the replica is a hot standby; any other DSN is taken as current).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from time import monotonic
from typing import IO, Any
from zoneinfo import ZoneInfo

import asyncpg

from authswitch.adapters.postgres.ownership import OWNER_BALANCES
from authswitch.adapters.sinks import ReportSink
from authswitch.domain.money import format_signed
from authswitch.domain.reports import (
    BalanceRow,
    balance_record,
    balance_report_name,
    file_date_and_time,
    valid_prefix,
)
from authswitch.domain.settlement import Line, MessageTotal, settlement_rows
from authswitch.errors import NotFound, RequestError, StoreUnavailable
from authswitch.service.admin import ADMIN_SOURCE
from authswitch.service.clock import Clock

__all__ = ["ReportWriter", "ScheduledReports"]

log = logging.getLogger(__name__)

CURSOR_PREFETCH = 1_000
PROGRESS_EVERY = 100_000
# How long a report waits for a replica to catch up with the primary before it fails (and is
# retried by its job); and how often it looks.
REPLICA_CATCH_UP_MAX_S = 60.0
REPLICA_POLL_S = 0.1

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


class ReportWriter:
    """Writes report files from snapshots of ``pool``; ``primary`` (default: the same pool)
    is where the writes happen, when ``pool`` is a read replica."""

    def __init__(
        self, pool: asyncpg.Pool[Any], *, primary: asyncpg.Pool[Any] | None = None
    ) -> None:
        self.pool = pool
        self.primary = primary or pool

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[Any]:
        """A connection in a repeatable-read, read-only transaction that sees at least every
        commit the primary had made when it was asked for."""
        async with self.pool.acquire() as conn:
            if self.primary is not self.pool:
                await self._caught_up(conn)
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                yield conn

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

    async def _client_exists(self, conn: Any, client_id: str) -> None:
        if not await conn.fetchval(
            "SELECT true FROM clients WHERE id = $1", _uuid_or_404(client_id)
        ):
            raise NotFound(f"client {client_id} does not exist")

    async def balance_report(
        self,
        sink: ReportSink,
        *,
        client_id: str,
        prefix: str,
        at: datetime,
        progress: Callable[[str], None] | None = None,
    ) -> tuple[str, int]:
        """Write seed 003's account balance report of a client; returns (file name, records)."""
        if not valid_prefix(prefix):
            raise RequestError("prefix must be 1 to 15 letters, digits or underscores")
        name = balance_report_name(prefix, client_id, at)
        async with self.snapshot() as conn:
            await self._client_exists(conn, client_id)
            total = await conn.fetchval(
                """SELECT count(*) FROM balances b JOIN accounts acc ON acc.id = b.account_id
                   JOIN programs p ON p.id = acc.program_id
                   WHERE p.client_id = $1 AND acc.kind = 'CUSTOMER'""",
                client_id,
            )
            async with sink.open(name) as out:
                header = {
                    "file_date_and_time": file_date_and_time(at),
                    "total_number_of_records": str(total),
                }
                out.write(json.dumps(header)[:-1].encode() + b', "account_balance": [')
                written = 0
                async for row in conn.cursor(_BALANCES, client_id, prefetch=CURSOR_PREFETCH):
                    record = balance_record(BalanceRow(*row))
                    out.write((b",\n  " if written else b"\n  ") + json.dumps(record).encode())
                    written += 1
                    if progress is not None and written % PROGRESS_EVERY == 0:
                        progress(f"{written} of {total} records")
                out.write(b"\n]}\n")
                assert written == total, "the snapshot changed under the report"
        return name, written

    async def subledger_net_changes(
        self, sink: ReportSink, *, program_id: str, day: date
    ) -> tuple[str, int]:
        """Seed 002's subledger sync: one net change per customer account (and asset) that
        changed on ``day`` (in the program's time zone), each a book transfer against the
        implicit clearing subledger, whose own line closes the file."""
        async with self.snapshot() as conn:
            program = await conn.fetchrow(
                "SELECT name, time_zone FROM programs WHERE id = $1", _uuid_or_404(program_id)
            )
            if program is None:
                raise NotFound(f"program {program_id} does not exist")
            start, end = _day_bounds(day, program["time_zone"])
            name = f"subledger-{program_id}-{day:%Y%m%d}.csv"
            async with sink.open(name) as out:
                text = _csv_writer(out)
                text.writerow(["date", "subledger", "account_reference", "asset", "net_change",
                               "direction"])  # fmt: skip
                lines = 0
                totals: dict[str, tuple[int, int]] = {}
                async for row in conn.cursor(
                    """SELECT p.account_id::text, acc.reference, p.asset, a.exponent,
                              sum(p.amount_minor) AS net
                       FROM postings p
                       JOIN accounts acc ON acc.id = p.account_id
                       JOIN assets a ON a.code = p.asset
                       WHERE acc.program_id = $1 AND acc.kind = 'CUSTOMER'
                         AND p.created_at >= $2 AND p.created_at < $3
                       GROUP BY p.account_id, acc.reference, p.asset, a.exponent
                       HAVING sum(p.amount_minor) <> 0
                       ORDER BY p.account_id, p.asset""",
                    program_id, start, end, prefetch=CURSOR_PREFETCH,
                ):  # fmt: skip
                    net = int(row["net"])
                    text.writerow(
                        [f"{day:%Y-%m-%d}", row[0], row[1], row[2], format_signed(net, row[3]),
                         "CREDIT" if net > 0 else "DEBIT"]
                    )  # fmt: skip
                    total, exponent = totals.get(row[2], (0, row[3]))
                    totals[row[2]] = (total + net, exponent)
                    lines += 1
                for asset, (total, exponent) in sorted(totals.items()):
                    # The implicit subledger takes the other side of every book transfer.
                    text.writerow(
                        [f"{day:%Y-%m-%d}", "implicit-clearing", program["name"], asset,
                         format_signed(-total, exponent), "CREDIT" if -total > 0 else "DEBIT"]
                    )  # fmt: skip
                _flush(text)
        return name, lines

    async def subledger_sync(
        self, sink: ReportSink, *, schedule_id: str, program_id: str, window_end: datetime
    ) -> tuple[str, int]:
        """One file of an intraday subledger sync (seed 002: "high volume programs may need
        multiple syncs per day"): the net change of every customer account (and asset) since
        the schedule's previous file, each a book transfer against the implicit clearing
        subledger, whose own line closes the file.

        A file holds the postings made before ``window_end`` that its snapshot sees and the
        previous file's did not (migration 0012): one that committed late, after the file of
        its time was taken, goes into the next file. The snapshot is stored with the window
        the first time the file is written, so a retry writes the same file. The previous
        window must be delivered first (the caller delivers a schedule's windows in order)."""
        windows = self.primary  # the windows are written on the primary
        async with self.snapshot() as conn:
            program = await conn.fetchrow(
                "SELECT name FROM programs WHERE id = $1", _uuid_or_404(program_id)
            )
            if program is None:
                raise NotFound(f"program {program_id} does not exist")
            previous = await windows.fetchrow(
                """SELECT window_end, snapshot::text FROM subledger_sync_windows
                   WHERE schedule_id = $1 AND window_end < $2
                   ORDER BY window_end DESC LIMIT 1""",
                schedule_id, window_end,
            )  # fmt: skip
            if previous is None:
                raise NotFound(f"subledger sync schedule {schedule_id} has no first window")
            taken = await conn.fetchval("SELECT pg_current_snapshot()::text")
            snapshot = await windows.fetchval(
                """INSERT INTO subledger_sync_windows (schedule_id, window_end, snapshot, taken_at)
                   VALUES ($1, $2, $3::text::pg_snapshot, now())
                   ON CONFLICT (schedule_id, window_end)
                   DO UPDATE SET taken_at = subledger_sync_windows.taken_at
                   RETURNING snapshot::text""",
                schedule_id, window_end, taken,
            )  # fmt: skip
            start, since = previous[0], previous[1]
            name = f"subledger-sync-{program_id}-{window_end.astimezone(UTC):%Y%m%dT%H%M%SZ}.csv"
            async with sink.open(name) as out:
                text = _csv_writer(out)
                text.writerow(["window_start", "window_end", "subledger", "account_reference",
                               "asset", "net_change", "direction"])  # fmt: skip
                bounds = [_iso(start), _iso(window_end)]
                lines = 0
                totals: dict[str, tuple[int, int]] = {}
                async for row in conn.cursor(
                    _SYNC_NET_CHANGES, program_id, start - SYNC_LATE_COMMIT_MAX, window_end,
                    snapshot, start, since, prefetch=CURSOR_PREFETCH,
                ):  # fmt: skip
                    net = int(row["net"])
                    text.writerow(
                        [*bounds, row[0], row[1], row[2], format_signed(net, row[3]),
                         "CREDIT" if net > 0 else "DEBIT"]
                    )  # fmt: skip
                    total, exponent = totals.get(row[2], (0, row[3]))
                    totals[row[2]] = (total + net, exponent)
                    lines += 1
                for asset, (total, exponent) in sorted(totals.items()):
                    text.writerow(
                        [*bounds, "implicit-clearing", program["name"], asset,
                         format_signed(-total, exponent), "CREDIT" if -total > 0 else "DEBIT"]
                    )  # fmt: skip
                _flush(text)
        return name, lines

    async def fbo_balances(
        self, sink: ReportSink, *, program_id: str, at: datetime
    ) -> tuple[str, int]:
        """Seed 002's pooled FBO balance file: each beneficial owner's balance per asset, the
        sum of their share of every account they hold (a joint account split by its holders'
        shares, equal unless set; an account without holders under its own id), in whole
        minor units that add up to the FBO total (domain/holders.py)."""
        async with self.snapshot() as conn:
            if not await conn.fetchval(
                "SELECT true FROM programs WHERE id = $1", _uuid_or_404(program_id)
            ):
                raise NotFound(f"program {program_id} does not exist")
            name = f"fbo-balances-{program_id}-{at:%Y%m%d-%H%M%S}.csv"
            async with sink.open(name) as out:
                text = _csv_writer(out)
                text.writerow(["customer_id", "asset", "balance"])
                lines = 0
                async for row in conn.cursor(OWNER_BALANCES, program_id, prefetch=CURSOR_PREFETCH):
                    text.writerow([row[0], row[1], format_signed(row[3], row[2])])
                    lines += 1
                _flush(text)
        return name, lines

    async def transactions(
        self, sink: ReportSink, *, program_id: str, day: date
    ) -> tuple[str, int]:
        """The daily transaction file: every posting of every journal entry the program
        posted on ``day`` (in its time zone), fee lines and dispute steps included, each
        entry's lines summing to zero per asset. Returns (file name, lines)."""

        def line(row: Any, business_date: str) -> list[object]:
            amount = int(row[9])
            return [
                row[0], _iso(row[1]), business_date, row[2], row[3], row[4], row[5], row[6],
                row[7], format_signed(amount, row[8]), amount,
                "CREDIT" if amount >= 0 else "DEBIT", row[10], row[11], row[12], row[13],
            ]  # fmt: skip

        return await self._day_file(
            sink, "transactions", program_id, day, TRANSACTION_HEADER, line,
            """SELECT e.id::text, e.created_at, e.kind, p.account_id::text, acc.kind,
                      acc.reference, coalesce(c.last_four, ''), p.asset, a.exponent,
                      p.amount_minor, e.source, e.message_id, e.network_reference,
                      e.description
               FROM journal_entries e
               JOIN postings p ON p.entry_id = e.id
               JOIN accounts acc ON acc.id = p.account_id
               JOIN assets a ON a.code = p.asset
               LEFT JOIN cards c ON c.id = e.card_id
               WHERE e.program_id = $1 AND e.created_at >= $2 AND e.created_at < $3
               ORDER BY e.created_at, e.source, e.message_id, e.kind = 'FEE', e.id,
                        acc.kind <> 'CUSTOMER', acc.kind, p.account_id, p.asset""",
        )  # fmt: skip

    async def chargebacks(self, sink: ReportSink, *, program_id: str, day: date) -> tuple[str, int]:
        """The daily chargeback file: every step any dispute of the program took on ``day``
        (in its time zone). Returns (file name, lines)."""

        def line(row: Any, business_date: str) -> list[object]:
            return [
                row[0], _iso(row[1]), business_date, row[2], row[3], row[4], row[5], row[6],
                format_signed(row[8], row[7]), row[8], *row[9:],
            ]  # fmt: skip

        return await self._day_file(
            sink, "chargebacks", program_id, day, CHARGEBACK_HEADER, line,
            """SELECT ev.id, ev.created_at, d.id::text, ev.step, ev.from_status,
                      ev.to_status, d.reason_code, a.exponent, ev.amount_minor, d.asset,
                      d.account_id::text, coalesce(c.last_four, ''), d.clearing_source,
                      d.clearing_message_id, d.network_reference,
                      coalesce(ev.entry_id::text, ''), ev.source, ev.message_id
               FROM dispute_events ev
               JOIN disputes d ON d.id = ev.dispute_id
               JOIN assets a ON a.code = d.asset
               LEFT JOIN cards c ON c.id = d.card_id
               WHERE d.program_id = $1 AND ev.created_at >= $2 AND ev.created_at < $3
               ORDER BY ev.created_at, ev.id""",
        )  # fmt: skip

    async def _day_file(
        self, sink: ReportSink, kind: str, program_id: str, day: date, header: list[str],
        line: Callable[[Any, str], list[object]], query: str,
    ) -> tuple[str, int]:  # fmt: skip
        """A CSV of one program-local day: ``query`` takes (program, start, end) and each of
        its rows becomes ``line(row, business date)``; one snapshot, streamed."""
        async with self.snapshot() as conn:
            program = await conn.fetchrow(
                "SELECT time_zone FROM programs WHERE id = $1", _uuid_or_404(program_id)
            )
            if program is None:
                raise NotFound(f"program {program_id} does not exist")
            zone = ZoneInfo(program["time_zone"])
            start, end = _day_bounds(day, program["time_zone"])
            name = f"{kind}-{program_id}-{day:%Y%m%d}.csv"
            async with sink.open(name) as out:
                text = _csv_writer(out)
                text.writerow(header)
                lines = 0
                async for row in conn.cursor(
                    query, program_id, start, end, prefetch=CURSOR_PREFETCH
                ):
                    text.writerow(line(row, f"{row[1].astimezone(zone):%Y-%m-%d}"))
                    lines += 1
                _flush(text)
        return name, lines

    async def settlement(self, sink: ReportSink, *, program_id: str, day: date) -> tuple[str, int]:
        """The daily settlement position of a program per network and asset, reconciled to
        its clearing account when authswitch keeps its ledger (domain/settlement.py,
        docs/files.md). Returns (file name, lines)."""
        async with self.snapshot() as conn:
            program = await conn.fetchrow(
                """SELECT p.time_zone,
                          p.mode = 'ON_LEDGER' OR coalesce(r.stand_in = 'SHADOW', false),
                          (SELECT id FROM accounts WHERE program_id = p.id AND kind = 'CLEARING'),
                          (SELECT id FROM accounts WHERE program_id = p.id AND kind = 'FEE_INCOME')
                   FROM programs p LEFT JOIN program_routing r ON r.program_id = p.id
                   WHERE p.id = $1""",
                _uuid_or_404(program_id),
            )
            if program is None:
                raise NotFound(f"program {program_id} does not exist")
            zone, ledger_kept, clearing, fee_account = program
            start, end = _day_bounds(day, zone)
            cleared = await conn.fetch(
                """SELECT d.source, d.asset, d.kind, count(*), sum(d.amount_minor)
                   FROM decisions d JOIN accounts acc ON acc.id = d.account_id
                   WHERE d.kind IN ('CLEARING', 'REFUND', 'CREDIT') AND d.response_code = '00'
                     AND d.created_at >= $2 AND d.created_at < $3
                     AND acc.program_id = $1 AND d.asset IS NOT NULL
                     AND d.source <> $4  -- an operator's credit adjustment is no network's
                   GROUP BY d.source, d.asset, d.kind""",
                program_id, start, end, ADMIN_SOURCE,
            )  # fmt: skip
            disputed = await conn.fetch(
                """SELECT d.clearing_source, d.asset,
                          CASE WHEN ev.step = 'CARDHOLDER_WON' THEN 'ARBITRATION'
                               ELSE ev.step END,
                          count(*), sum(ev.amount_minor)
                   FROM dispute_events ev JOIN disputes d ON d.id = ev.dispute_id
                   WHERE d.program_id = $1 AND ev.created_at >= $2 AND ev.created_at < $3
                     AND (ev.step IN ('CHARGEBACK', 'REPRESENTMENT')
                          OR (ev.step = 'CARDHOLDER_WON' AND ev.from_status = 'REPRESENTED'))
                   GROUP BY 1, 2, 3""",
                program_id, start, end,
            )  # fmt: skip
            charged = await conn.fetch(_ACCOUNT_DAY, fee_account, program_id, start, end, "source")
            messages = [
                MessageTotal(_MESSAGE_LINES[r[2]], r[0], r[1], int(r[3]), int(r[4]))
                for r in cleared
            ] + [
                MessageTotal(_DISPUTE_LINES[r[2]], r[0], r[1], int(r[3]), int(r[4]))
                for r in disputed
            ]
            fees = [MessageTotal(Line.FEES, r[0], r[1], int(r[2]), int(r[3])) for r in charged]
            by_kind: dict[tuple[str, str], tuple[int, int]] | None = None
            closing: dict[str, int] | None = None
            if ledger_kept:
                moved = await conn.fetch(_ACCOUNT_DAY, clearing, program_id, start, end, "kind")
                by_kind = {(r[0], r[1]): (int(r[2]), int(r[3])) for r in moved}
                # The clearing account's balance at the end of the day: its postings so far
                # (and what months dropped by retention summed to).
                balance = await conn.fetch(
                    """SELECT asset, sum(amount_minor) FROM (
                           SELECT asset, amount_minor FROM postings
                           WHERE account_id = $1 AND created_at < $2
                           UNION ALL
                           SELECT asset, amount_minor FROM posting_archive_totals
                           WHERE account_id = $1) t
                       GROUP BY asset""",
                    clearing, end,
                )  # fmt: skip
                closing = {r[0]: int(r[1]) for r in balance}
            rows = settlement_rows(
                messages, fees, clearing_by_kind=by_kind, clearing_closing=closing
            )
            exponents = {r[0]: r[1] for r in await conn.fetch("SELECT code, exponent FROM assets")}
            name = f"settlement-{program_id}-{day:%Y%m%d}.csv"
            async with sink.open(name) as out:
                text = _csv_writer(out)
                text.writerow(SETTLEMENT_HEADER)
                for row in rows:
                    text.writerow(
                        [f"{day:%Y-%m-%d}", row.network, row.asset, row.line.value, row.detail,
                         row.count, format_signed(row.amount_minor, exponents[row.asset]),
                         row.amount_minor]
                    )  # fmt: skip
                _flush(text)
        return name, len(rows)


# A posting that commits this long after the time it carries may be missed by a subledger
# sync (a group commit takes milliseconds; a stalled one fails long before this).
SYNC_LATE_COMMIT_MAX = timedelta(hours=24)
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
# One account's postings of a day, by the entry's source or kind ($5), and asset.
_ACCOUNT_DAY = """
    SELECT CASE WHEN $5 = 'kind' THEN e.kind ELSE e.source END, p.asset, count(*),
           sum(p.amount_minor)
    FROM postings p JOIN journal_entries e ON e.id = p.entry_id
    WHERE p.account_id = $1 AND e.program_id = $2
      AND p.created_at >= $3 AND p.created_at < $4 AND e.created_at >= $3 AND e.created_at < $4
    GROUP BY 1, 2"""
_MESSAGE_LINES = {
    "CLEARING": Line.CLEARED_PURCHASES, "REFUND": Line.REFUNDS, "CREDIT": Line.ORIGINAL_CREDITS,
}  # fmt: skip
_DISPUTE_LINES = {
    "CHARGEBACK": Line.CHARGEBACKS, "REPRESENTMENT": Line.REPRESENTMENTS,
    "ARBITRATION": Line.DISPUTE_ARBITRATION,
}  # fmt: skip


# The columns of the daily files (docs/files.md describes each).
TRANSACTION_HEADER = [
    "entry_id", "posted_at", "business_date", "entry_type", "account_id", "account_kind",
    "account_reference", "card_last_four", "asset", "amount", "amount_minor", "direction",
    "source", "message_id", "network_reference", "description",
]  # fmt: skip
SETTLEMENT_HEADER = [
    "business_date", "network", "asset", "line", "detail", "count", "amount", "amount_minor",
]  # fmt: skip
CHARGEBACK_HEADER = [
    "event_id", "occurred_at", "business_date", "dispute_id", "step", "from_status",
    "to_status", "reason_code", "amount", "amount_minor", "asset", "account_id",
    "card_last_four", "clearing_source", "clearing_message_id", "network_reference",
    "entry_id", "source", "message_id",
]  # fmt: skip


def _iso(at: datetime) -> str:
    """UTC, millisecond precision: 2026-11-23T14:05:09.123Z."""
    return at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _CsvOut:
    """csv.writer over a binary file, in chunks."""

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, lineterminator="\n")

    def writerow(self, row: Sequence[object]) -> None:
        self.writer.writerow(row)
        if self.buffer.tell() > 64 * 1024:
            _flush(self)


def _csv_writer(out: IO[bytes]) -> _CsvOut:
    return _CsvOut(out)


def _flush(text: _CsvOut) -> None:
    text.out.write(text.buffer.getvalue().encode())
    text.buffer.seek(0)
    text.buffer.truncate()


def _uuid_or_404(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise NotFound(f"{value!r} does not exist") from None


def _day_bounds(day: date, time_zone: str) -> tuple[datetime, datetime]:
    zone = ZoneInfo(time_zone)
    start = datetime.combine(day, time.min, zone)
    return start, datetime.combine(day + timedelta(days=1), time.min, zone)


class ScheduledReports:
    """Writes each subscribed client's daily balance report once a day, after ``at``
    (HH:MM UTC). The run is claimed in ``report_runs`` first, so two replicas never both
    write it, and a crash mid-way leaves it to be written again."""

    def __init__(self, writer: ReportWriter, sink: ReportSink, clock: Clock, at: str) -> None:
        self.writer = writer
        self.sink = sink
        self.clock = clock
        hours, minutes = (int(part) for part in at.split(":"))
        self.at = time(hours, minutes)

    async def run_due(self) -> int:
        now = self.clock.now()
        if now.astimezone(UTC).time() < self.at:
            return 0
        day = now.astimezone(UTC).date()
        pool = self.writer.primary  # the claims are writes
        subscriptions = await pool.fetch(
            "SELECT client_id::text, prefix FROM report_subscriptions WHERE enabled"
        )
        written = 0
        for subscription in subscriptions:
            client_id, prefix = subscription[0], subscription[1]
            claimed = await pool.fetchval(
                """INSERT INTO report_runs (kind, subject, day, started_at)
                   VALUES ('balances', $1, $2, $3)
                   ON CONFLICT (kind, subject, day) DO UPDATE SET started_at = EXCLUDED.started_at
                   WHERE report_runs.finished_at IS NULL
                     AND report_runs.started_at < EXCLUDED.started_at - interval '1 hour'
                   RETURNING true""",
                client_id,
                day,
                now,
            )
            if not claimed:
                continue
            name, records = await self.writer.balance_report(
                self.sink, client_id=client_id, prefix=prefix, at=now
            )
            await pool.execute(
                """UPDATE report_runs SET file_name = $3, records = $4, finished_at = $5
                   WHERE kind = 'balances' AND subject = $1 AND day = $2""",
                client_id,
                day,
                name,
                records,
                self.clock.now(),
            )
            log.info("balance report written", extra={"file": name, "records": records})
            written += 1
        return written
