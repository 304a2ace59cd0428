"""The daily settlement position (issue 17): a golden file of a small day with two networks,
clearings, a refund, an original credit, a dispute through arbitration and fees, reconciled
to the clearing account; an off-ledger program's position from its forwarded messages; delivery on a
schedule and the command."""

from __future__ import annotations

import asyncio
import csv
import io
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest

from authswitch.adapters.postgres.files import FileScheduleStore
from authswitch.adapters.postgres.reports import ReportStore
from authswitch.adapters.sinks import DirectorySink
from authswitch.app import Application
from authswitch.secrets import SecretStore
from authswitch.service.clock import ManualClock
from authswitch.service.files import FileDeliveries
from authswitch.service.reports import ReportWriter
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.cli import run_cli
from tests.support.clocked import clocked_app
from tests.support.ledger import IssuedCard, Ledger
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(120)

DAY = (datetime.now(UTC) - timedelta(days=3)).date()
K = f"st-{uuid.uuid4().hex[:8]}-"  # message ids of this module, unique in the session's database
HEADER = ["business_date", "network", "asset", "line", "detail", "count", "amount",
          "amount_minor"]  # fmt: skip


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), UTC)


@dataclass
class SettledDay:
    app: Application
    ledger: Ledger
    clock: ManualClock
    program_id: str
    off_program_id: str


async def _clear(
    ledger: Ledger, card: IssuedCard, amount_minor: int, *, source: str, message_id: str,
    reference: str,
) -> pb.ClearResponse:  # fmt: skip
    return await ledger.auth.Clear(
        pb.ClearRequest(
            source=source, message_id=message_id, network_reference=reference, pan=card.pan,
            billing_amount=c.Money(amount_minor=amount_minor, asset="GBP"), final=True,
            merchant=pb.Merchant(mcc="5411", country="GB", name="Shop"),
        )
    )  # fmt: skip


async def _refund(ledger: Ledger, card: IssuedCard, amount_minor: int, message_id: str) -> None:
    refund = await ledger.auth.Refund(
        pb.RefundRequest(
            source="visa", message_id=message_id, network_reference=message_id, pan=card.pan,
            billing_amount=c.Money(amount_minor=amount_minor, asset="GBP"),
        )
    )  # fmt: skip
    assert refund.response_code == "00"


@pytest.fixture(scope="module")
async def settled_day(stores: Stores) -> AsyncIterator[SettledDay]:
    clock = ManualClock(at(DAY - timedelta(days=1), 12))
    async with clocked_app(stores, "settle", clock) as (app, ledger, _):
        program_id = await ledger.program()
        product_id = await ledger.product(program_id)
        account_id = await ledger.account(product_id)
        await ledger.credit(account_id, 10_000)  # the day before
        card = await ledger.card(account_id=account_id)
        await ledger.fees(
            product_id,
            la.FeeRule(name="clearing", stage=la.FEE_STAGE_CLEARING, asset="GBP", flat_minor=50),
        )
        clock.set(at(DAY, 9))
        await ledger.credit(account_id, 1_000)
        clock.set(at(DAY, 10))
        request = ledger.request(card, 4_000, message_id=f"{K}auth-1")
        request.network_reference = "NR1"
        assert (await ledger.auth.Authorize(request)).response_code == "00"
        clock.set(at(DAY, 11))
        cleared = await _clear(ledger, card, 4_000, source="visa", message_id=f"{K}clr-1",
                               reference="NR1")  # fmt: skip
        assert cleared.response_code == "00"
        clock.set(at(DAY, 11, 30))
        unmatched = await _clear(ledger, card, 700, source="mastercard", message_id=f"{K}mc-1",
                                 reference="MC1")  # fmt: skip
        assert unmatched.response_code == "00"
        clock.set(at(DAY, 12))
        await _refund(ledger, card, 500, f"{K}ref-1")
        clock.set(at(DAY, 12, 30))  # a push-to-card payment: the network pays the issuer
        credited = await ledger.auth.Credit(
            pb.CreditRequest(
                source="visa", message_id=f"{K}oct-1", network_reference=f"{K}oct-1",
                pan=card.pan, billing_amount=c.Money(amount_minor=1_200, asset="GBP"),
                transaction_amount=c.Money(amount_minor=1_200, asset="GBP"),
                credit_type=pb.CREDIT_TYPE_PERSON_TO_PERSON, sender_name="A Sender",
                merchant=pb.Merchant(mcc="6012", country="GB", name="Payouts Ltd"),
            )
        )  # fmt: skip
        assert credited.response_code == "00"
        clock.set(at(DAY, 13))
        dispute = (await ledger.open_dispute(f"{K}clr-1", 4_000, provisional=True)).dispute
        clock.set(at(DAY, 14))
        assert (await ledger.chargeback(dispute)).response_code == "00"
        clock.set(at(DAY, 15))
        assert (await ledger.represent(dispute)).response_code == "00"
        clock.set(at(DAY, 16))
        await ledger.resolve_dispute(dispute.dispute_id, la.DISPUTE_OUTCOME_CARDHOLDER_WON)
        # An off-ledger program: its clearings are only forwarded, it keeps no journal.
        off_program_id = await ledger.program(c.LEDGER_MODE_OFF_LEDGER)
        off_product = await ledger.product(off_program_id)
        off_card = await ledger.card(account_id=await ledger.account(off_product))
        clock.set(at(DAY, 17))
        forwarded = await _clear(ledger, off_card, 2_000, source="visa", message_id=f"{K}off-clr-1",
                                 reference="OFF1")  # fmt: skip
        assert forwarded.response_code == "00"
        await _refund(ledger, off_card, 300, f"{K}off-ref-1")
        clock.set(at(DAY + timedelta(days=1), 9))  # the next day: not in the file
        next_day = await _clear(ledger, card, 100, source="visa", message_id=f"{K}clr-2",
                                reference="NR3")  # fmt: skip
        assert next_day.response_code == "00"
        yield SettledDay(app, ledger, clock, program_id, off_program_id)


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def _golden(day: date) -> list[list[str]]:
    d = f"{day:%Y-%m-%d}"

    def line(network: str, name: str, count: int, amount: str, minor: int,
             detail: str = "") -> list[str]:  # fmt: skip
        return [d, network, "GBP", name, detail, str(count), amount, str(minor)]

    return [
        HEADER,
        line("mastercard", "cleared_purchases", 1, "+7.00", 700),
        line("mastercard", "net_settlement", 1, "+7.00", 700),
        line("mastercard", "fees", 1, "+0.50", 50),
        line("visa", "cleared_purchases", 1, "+40.00", 4_000),
        line("visa", "refunds", 1, "-5.00", -500),
        line("visa", "original_credits", 1, "-12.00", -1_200),
        line("visa", "chargebacks", 1, "-40.00", -4_000),
        line("visa", "representments", 1, "+40.00", 4_000),
        line("visa", "dispute_arbitration", 1, "-40.00", -4_000),
        line("visa", "net_settlement", 6, "-17.00", -1_700),
        line("visa", "fees", 1, "+0.50", 50),
        # The clearing account: the day before's load, the day's network movements (which
        # are the net settlement, -10.00) and its load, to the closing balance.
        line("", "clearing_account_opening", 0, "-100.00", -10_000),
        line("", "clearing_account_network", 7, "-10.00", -1_000),
        line("", "clearing_account_other", 1, "-10.00", -1_000, "LOAD"),
        line("", "clearing_account_closing", 0, "-120.00", -12_000),
        line("", "unreconciled", 0, "+0.00", 0),
    ]


async def test_golden_settlement_position_reconciled_to_the_clearing_account(
    settled_day: SettledDay, tmp_path: Path
) -> None:
    s = settled_day
    assert s.app.pool is not None
    name, lines = await ReportWriter(ReportStore(s.app.pool)).settlement(
        DirectorySink(tmp_path), program_id=s.program_id, day=DAY
    )
    assert name == f"settlement-{s.program_id}-{DAY:%Y%m%d}.csv"
    assert _rows((tmp_path / name).read_text()) == _golden(DAY)
    assert lines == 16
    # The closing balance is the clearing account's, as the ledger has it now less what the
    # next day moved (the clearing of 1.00).
    now = await s.app.pool.fetchval(
        """SELECT sum(p.amount_minor) FROM postings p JOIN accounts a ON a.id = p.account_id
           WHERE a.program_id = $1 AND a.kind = 'CLEARING'""",
        s.program_id,
    )
    assert now - 100 == -12_000


async def test_an_off_ledger_program_has_a_position_from_its_forwarded_messages(
    settled_day: SettledDay, tmp_path: Path
) -> None:
    s = settled_day
    assert s.app.pool is not None
    name, _ = await ReportWriter(ReportStore(s.app.pool)).settlement(
        DirectorySink(tmp_path), program_id=s.off_program_id, day=DAY
    )
    d = f"{DAY:%Y-%m-%d}"
    assert _rows((tmp_path / name).read_text()) == [
        HEADER,
        [d, "visa", "GBP", "cleared_purchases", "", "1", "+20.00", "2000"],
        [d, "visa", "GBP", "refunds", "", "1", "-3.00", "-300"],
        [d, "visa", "GBP", "net_settlement", "", "2", "+17.00", "1700"],
    ]  # no clearing account: authswitch keeps no ledger for it


async def test_the_settlement_file_is_scheduled_and_written_by_the_command(
    settled_day: SettledDay, stores: Stores, tmp_path: Path
) -> None:
    s = settled_day
    assert s.app.pool is not None
    s.clock.set(at(DAY, 18))
    schedule = await s.ledger.admin.CreateFileSchedule(
        la.CreateFileScheduleRequest(
            schedule=la.FileSchedule(
                kind=la.FILE_KIND_SETTLEMENT, program_id=s.program_id, cron="0 5 * * *",
                directory=str(tmp_path / "out"),
            )
        )
    )  # fmt: skip
    deliveries = FileDeliveries(
        FileScheduleStore(s.app.pool),
        ReportWriter(ReportStore(s.app.pool)),
        SecretStore(None),
        s.clock,
        tmp_path / "spool",
    )
    s.clock.set(at(DAY + timedelta(days=1), 6))
    assert await deliveries.run_due(schedule_id=schedule.schedule.schedule_id) == 1
    name = f"settlement-{s.program_id}-{DAY:%Y%m%d}.csv"
    assert _rows((tmp_path / "out" / name).read_text()) == _golden(DAY)
    assert await deliveries.run_due(schedule_id=schedule.schedule.schedule_id) == 0
    result = await asyncio.to_thread(
        run_cli, stores, "report", "settlement", "--program", s.program_id, "--date",
        f"{DAY:%Y-%m-%d}", "--out", str(tmp_path / "cli"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert _rows((tmp_path / "cli" / name).read_text()) == _golden(DAY)
