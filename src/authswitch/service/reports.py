"""Report files: seed 003's daily account balance report and seed 002's sponsor-bank files
(the subledger net-change file, the pooled FBO balance file, and the daily transaction and
chargeback files every partner-managed program owes; formats in docs/files.md).

Each report is one consistent snapshot (a single repeatable-read, read-only transaction),
streamed from a server-side cursor so that a million accounts never sit in memory at once,
and written through a sink that only shows the file once it is complete.

Reports may read from a replica (``AUTHSWITCH_REPORTS_POSTGRES_DSN``), which the store
(adapters/postgres/reports.py) waits for until it has caught up with the primary.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import IO, Protocol, TypeVar
from zoneinfo import ZoneInfo

from authswitch.adapters.postgres.reports import ReportSnapshot, ReportStore
from authswitch.adapters.sinks import ReportSink
from authswitch.domain.money import format_signed, format_unsigned
from authswitch.domain.reports import (
    ChargebackEvent,
    NetChange,
    SettlementProgram,
    TransactionLine,
    balance_record,
    balance_report_name,
    file_date_and_time,
    valid_prefix,
)
from authswitch.domain.settlement import Line, MessageTotal, SettlementRow, settlement_rows
from authswitch.errors import NotFound, RequestError
from authswitch.service.admin import ADMIN_SOURCE
from authswitch.service.clock import Clock

__all__ = ["ReportWriter", "ScheduledReports"]

log = logging.getLogger(__name__)

PROGRESS_EVERY = 100_000


class ReportWriter:
    """Writes report files from snapshots of its store."""

    def __init__(self, store: ReportStore) -> None:
        self.store = store

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
        async with self.store.snapshot() as ledger:
            if not await ledger.client_exists(_uuid_or_404(client_id)):
                raise NotFound(f"client {client_id} does not exist")
            total = await ledger.count_customer_balances(client_id)
            async with sink.open(name) as out:
                header = {
                    "file_date_and_time": file_date_and_time(at),
                    "total_number_of_records": str(total),
                }
                out.write(json.dumps(header)[:-1].encode() + b', "account_balance": [')
                written = 0
                async for row in ledger.customer_balances(client_id):
                    record = balance_record(row)
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
        async with self.store.snapshot() as ledger:
            program = await ledger.program(_uuid_or_404(program_id))
            if program is None:
                raise NotFound(f"program {program_id} does not exist")
            start, end = _day_bounds(day, program.time_zone)
            name = f"subledger-{program_id}-{day:%Y%m%d}.csv"
            async with sink.open(name) as out:
                text = _csv_writer(out)
                text.writerow(["date", "subledger", "account_reference", "asset", "net_change",
                               "direction"])  # fmt: skip
                lines = await _net_change_lines(
                    text, [f"{day:%Y-%m-%d}"], ledger.net_changes(program_id, start, end),
                    program.name,
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
        async with self.store.snapshot() as ledger:
            program = await ledger.program(_uuid_or_404(program_id))
            if program is None:
                raise NotFound(f"program {program_id} does not exist")
            previous = await self.store.previous_window(schedule_id, window_end)
            if previous is None:
                raise NotFound(f"subledger sync schedule {schedule_id} has no first window")
            taken = await ledger.current_snapshot()
            snapshot = await self.store.record_window(schedule_id, window_end, taken)
            name = f"subledger-sync-{program_id}-{window_end.astimezone(UTC):%Y%m%dT%H%M%SZ}.csv"
            async with sink.open(name) as out:
                text = _csv_writer(out)
                text.writerow(["window_start", "window_end", "subledger", "account_reference",
                               "asset", "net_change", "direction"])  # fmt: skip
                changes = ledger.sync_net_changes(
                    program_id, previous=previous, window_end=window_end, snapshot=snapshot
                )
                bounds = [_iso(previous.window_end), _iso(window_end)]
                lines = await _net_change_lines(text, bounds, changes, program.name)
                _flush(text)
        return name, lines

    async def fbo_balances(
        self, sink: ReportSink, *, program_id: str, at: datetime
    ) -> tuple[str, int]:
        """Seed 002's pooled FBO balance file: each beneficial owner's balance per asset, the
        sum of their share of every account they hold (a joint account split by its holders'
        shares, equal unless set; an account without holders under its own id), in whole
        minor units that add up to the FBO total (domain/holders.py)."""
        async with self.store.snapshot() as ledger:
            if await ledger.program(_uuid_or_404(program_id)) is None:
                raise NotFound(f"program {program_id} does not exist")
            name = f"fbo-balances-{program_id}-{at:%Y%m%d-%H%M%S}.csv"
            async with sink.open(name) as out:
                text = _csv_writer(out)
                text.writerow(["customer_id", "asset", "balance"])
                lines = 0
                async for owned in ledger.owner_balances(program_id):
                    text.writerow(
                        [owned.owner, owned.asset, format_signed(owned.balance_minor,
                                                                 owned.exponent)]
                    )  # fmt: skip
                    lines += 1
                _flush(text)
        return name, lines

    async def transactions(
        self, sink: ReportSink, *, program_id: str, day: date
    ) -> tuple[str, int]:
        """The daily transaction file: every posting of every journal entry the program
        posted on ``day`` (in its time zone), fee lines and dispute steps included, each
        entry's lines summing to zero per asset. Returns (file name, lines)."""

        def line(row: TransactionLine, business_date: str) -> list[object]:
            amount = row.amount_minor
            return [
                row.entry_id, _iso(row.created_at), business_date, row.entry_kind,
                row.account_id, row.account_kind, row.account_reference, row.card_last_four,
                row.asset, format_signed(amount, row.exponent), amount,
                "CREDIT" if amount >= 0 else "DEBIT", row.source, row.message_id,
                row.network_reference, row.description, row.billing_asset,
                "" if row.billing_minor is None or row.billing_exponent is None
                else format_unsigned(row.billing_minor, row.billing_exponent),
                row.fx_rate,
            ]  # fmt: skip

        return await self._day_file(
            sink, "transactions", program_id, day, TRANSACTION_HEADER,
            ReportSnapshot.transaction_lines, line,
        )  # fmt: skip

    async def chargebacks(self, sink: ReportSink, *, program_id: str, day: date) -> tuple[str, int]:
        """The daily chargeback file: every step any dispute of the program took on ``day``
        (in its time zone). Returns (file name, lines)."""

        def line(row: ChargebackEvent, business_date: str) -> list[object]:
            return [
                row.event_id, _iso(row.created_at), business_date, row.dispute_id, row.step,
                row.from_status, row.to_status, row.reason_code,
                format_signed(row.amount_minor, row.exponent), row.amount_minor, row.asset,
                row.account_id, row.card_last_four, row.clearing_source,
                row.clearing_message_id, row.network_reference, row.entry_id, row.source,
                row.message_id,
            ]  # fmt: skip

        return await self._day_file(
            sink, "chargebacks", program_id, day, CHARGEBACK_HEADER,
            ReportSnapshot.chargeback_events, line,
        )  # fmt: skip

    async def _day_file(
        self, sink: ReportSink, kind: str, program_id: str, day: date, header: list[str],
        rows: Callable[[ReportSnapshot, str, datetime, datetime], AsyncIterator[_Row]],
        line: Callable[[_Row, str], list[object]],
    ) -> tuple[str, int]:  # fmt: skip
        """A CSV of one program-local day: ``rows`` takes (snapshot, program, start, end) and
        each of its rows becomes ``line(row, business date)``; one snapshot, streamed."""
        async with self.store.snapshot() as ledger:
            program = await ledger.program(_uuid_or_404(program_id))
            if program is None:
                raise NotFound(f"program {program_id} does not exist")
            zone = ZoneInfo(program.time_zone)
            start, end = _day_bounds(day, program.time_zone)
            name = f"{kind}-{program_id}-{day:%Y%m%d}.csv"
            async with sink.open(name) as out:
                text = _csv_writer(out)
                text.writerow(header)
                lines = 0
                async for row in rows(ledger, program_id, start, end):
                    text.writerow(line(row, f"{row.created_at.astimezone(zone):%Y-%m-%d}"))
                    lines += 1
                _flush(text)
        return name, lines

    async def settlement(self, sink: ReportSink, *, program_id: str, day: date) -> tuple[str, int]:
        """The daily settlement position of a program per network and asset, reconciled to
        its clearing account when authswitch keeps its ledger (domain/settlement.py,
        docs/files.md). Returns (file name, lines)."""
        async with self.store.snapshot() as ledger:
            program = await ledger.settlement_program(_uuid_or_404(program_id))
            if program is None:
                raise NotFound(f"program {program_id} does not exist")
            rows = await _settlement_position(ledger, program_id, program, day)
            exponents = await ledger.exponents()
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


class _Dated(Protocol):
    @property
    def created_at(self) -> datetime: ...


_Row = TypeVar("_Row", bound=_Dated)


async def _net_change_lines(
    text: _CsvOut, lead: list[str], changes: AsyncIterator[NetChange], subledger: str
) -> int:
    """Each change a line after ``lead`` (its date, or its window), a book transfer against
    the implicit clearing subledger, whose own line per asset closes the file; returns how
    many changes there were."""
    lines = 0
    totals: dict[str, tuple[int, int]] = {}
    async for change in changes:
        net = change.net_minor
        text.writerow(
            [*lead, change.account_id, change.account_reference, change.asset,
             format_signed(net, change.exponent), "CREDIT" if net > 0 else "DEBIT"]
        )  # fmt: skip
        total, exponent = totals.get(change.asset, (0, change.exponent))
        totals[change.asset] = (total + net, exponent)
        lines += 1
    for asset, (total, exponent) in sorted(totals.items()):
        # The implicit subledger takes the other side of every book transfer.
        text.writerow(
            [*lead, "implicit-clearing", subledger, asset, format_signed(-total, exponent),
             "CREDIT" if -total > 0 else "DEBIT"]
        )  # fmt: skip
    return lines


async def _settlement_position(
    ledger: ReportSnapshot, program_id: str, program: SettlementProgram, day: date
) -> list[SettlementRow]:
    """The settlement file's rows of a program-local day: the networks' messages and the
    fees charged, and, when authswitch keeps the program's ledger, its clearing account's
    movements and closing balance to reconcile them with."""
    start, end = _day_bounds(day, program.time_zone)
    # An operator's credit adjustment is no network's.
    cleared = await ledger.cleared_messages(program_id, start, end, excluding_source=ADMIN_SOURCE)
    disputed = await ledger.dispute_steps(program_id, start, end)
    charged = await ledger.account_postings(
        program.fee_account_id, program_id, start, end, by="source"
    )
    messages = [
        MessageTotal(_MESSAGE_LINES[m.kind], m.network, m.asset, m.count, m.amount_minor)
        for m in cleared
    ] + [
        MessageTotal(_DISPUTE_LINES[m.kind], m.network, m.asset, m.count, m.amount_minor)
        for m in disputed
    ]
    fees = [MessageTotal(Line.FEES, p.key, p.asset, p.count, p.amount_minor) for p in charged]
    by_kind: dict[tuple[str, str], tuple[int, int]] | None = None
    closing: dict[str, int] | None = None
    if program.ledger_kept:
        clearing = program.clearing_account_id
        moved = await ledger.account_postings(clearing, program_id, start, end, by="kind")
        by_kind = {(p.key, p.asset): (p.count, p.amount_minor) for p in moved}
        # The clearing account's balance at the end of the day.
        closing = await ledger.closing_balances(clearing, end)
    return settlement_rows(messages, fees, clearing_by_kind=by_kind, clearing_closing=closing)


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
    "source", "message_id", "network_reference", "description", "billing_asset",
    "billing_amount", "fx_rate",
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
        store = self.writer.store  # the claims are written on the primary
        written = 0
        for subscription in await store.subscriptions():
            client_id, prefix = subscription.client_id, subscription.prefix
            if not await store.claim_run(client_id, day, now):
                continue
            name, records = await self.writer.balance_report(
                self.sink, client_id=client_id, prefix=prefix, at=now
            )
            await store.finish_run(
                client_id, day, file_name=name, records=records, at=self.clock.now()
            )
            log.info("balance report written", extra={"file": name, "records": records})
            written += 1
        return written
