"""The sponsor bank's daily files and their scheduled delivery: golden transaction and
chargeback files of a small day, schedules through the admin API (and their refusals), a
directory delivery that runs once per due time and catches up missed days, and a rerun in
another process that sends nothing twice."""

from __future__ import annotations

import asyncio
import csv
import io
import subprocess
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import grpc
import pytest

from authswitch.adapters.postgres.files import FileScheduleStore
from authswitch.adapters.postgres.reports import ReportStore
from authswitch.adapters.sinks import DirectorySink
from authswitch.app import Application
from authswitch.secrets import SecretStore
from authswitch.service.clock import ManualClock
from authswitch.service.files import DeliverySettings, FileDeliveries
from authswitch.service.reports import ReportWriter
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.cli import run_cli
from tests.support.clocked import clocked_app
from tests.support.ledger import IssuedCard, Ledger
from tests.support.proxy import FaultProxy
from tests.support.sftp import serve_sftp
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(120)

# The small day: three days ago (so that a delivery by the real clock, in another process,
# finds every due file delivered already). Times are UTC, within the day in London whether
# or not summer time applies.
DAY = (datetime.now(UTC) - timedelta(days=3)).date()


def at(day: date, hour: int, minute: int = 0) -> datetime:
    return datetime.combine(day, time(hour, minute), UTC)


@dataclass
class SmallDay:
    app: Application
    ledger: Ledger
    clock: ManualClock
    card: IssuedCard
    program_id: str
    dispute_id: str
    labels: dict[str, str]  # id -> label, for comparing files with ids in them


@pytest.fixture(scope="module")
async def small_day(stores: Stores) -> AsyncIterator[SmallDay]:
    clock = ManualClock(at(DAY - timedelta(days=1), 12))
    async with clocked_app(stores, "files", clock) as (app, ledger, _):
        program_id = await ledger.program()
        product_id = await ledger.product(program_id)
        account_id = await ledger.account(product_id)
        await ledger.credit(account_id, 10_000)  # the day before: not in the file
        card = await ledger.card(account_id=account_id)
        clock.set(at(DAY, 9))
        await ledger.fees(
            product_id,
            la.FeeRule(name="clearing", stage=la.FEE_STAGE_CLEARING, asset="GBP", flat_minor=50),
        )
        clock.set(at(DAY, 9, 30))
        await ledger.admin.CreditAccount(
            la.CreditAccountRequest(
                account_id=account_id, amount=c.Money(amount_minor=1_000, asset="GBP"),
                purpose=la.ADJUSTMENT_PURPOSE_LOAD, idempotency_key="load-2",
                description="top-up",
            )
        )  # fmt: skip
        clock.set(at(DAY, 10))
        request = ledger.request(card, 4_000, message_id="auth-1")
        request.network_reference = "NR1"
        assert (await ledger.auth.Authorize(request)).response_code == "00"
        clock.set(at(DAY, 11))
        cleared = await ledger.clear(card, "NR1", 4_000, message_id="clr-1")
        assert cleared.response_code == "00"
        clock.set(at(DAY, 12))
        refund = await ledger.auth.Refund(
            pb.RefundRequest(
                source="visa", message_id="ref-1", network_reference="NR2", pan=card.pan,
                billing_amount=c.Money(amount_minor=500, asset="GBP"),
                merchant=pb.Merchant(mcc="5411", country="GB", name="Shop"),
            )
        )  # fmt: skip
        assert refund.response_code == "00"
        clock.set(at(DAY, 13))
        dispute = (await ledger.open_dispute("clr-1", 4_000, provisional=True, key="dsp-1")).dispute
        clock.set(at(DAY, 14))
        assert (await ledger.chargeback(dispute, message_id="cb-1")).response_code == "00"
        clock.set(at(DAY + timedelta(days=1), 12))
        assert (await ledger.represent(dispute, message_id="rp-1")).response_code == "00"
        assert app.pool is not None
        rows = await app.pool.fetch(
            "SELECT id::text, kind FROM accounts WHERE program_id = $1", program_id
        )
        labels = {r[0]: r[1] for r in rows}  # CUSTOMER, CLEARING, FEE_INCOME, DISPUTES
        labels[dispute.dispute_id] = "DISPUTE"
        labels[program_id] = "PROGRAM"
        yield SmallDay(app, ledger, clock, card, program_id, dispute.dispute_id, labels)


def normalised(text: str, labels: dict[str, str], columns: tuple[str, ...]) -> list[list[str]]:
    """The file's rows with known ids replaced by labels, and the ids in ``columns``
    numbered in order of appearance (E1, E2, ...)."""
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    numbered: dict[str, dict[str, str]] = {name: {} for name in columns}
    out = [header]
    for row in body:
        cells = []
        for name, raw in zip(header, row, strict=True):
            cell = raw
            if name in numbered and cell:
                seen = numbered[name]
                cell = seen.setdefault(cell, f"{name[0].upper()}{len(seen) + 1}")
            for known, label in labels.items():
                cell = cell.replace(known, label)
            cells.append(cell)
        out.append(cells)
    return out


def _golden_transactions(day: date, four: str) -> list[list[str]]:
    d = f"{day:%Y-%m-%d}"

    def line(entry: str, hour: int, kind: str, account: str, amount: str, minor: int,
             source: str, message: str, reference: str, description: str,
             card: str = four) -> list[str]:  # fmt: skip
        return [
            entry, f"{d}T{hour:02d}:{'30' if entry == 'E1' else '00'}:00.000Z", d, kind,
            account, account, "", card, "GBP", amount, str(minor),
            "CREDIT" if minor >= 0 else "DEBIT", source, message, reference, description,
            "", "", "",
        ]  # fmt: skip

    return [
        ["entry_id", "posted_at", "business_date", "entry_type", "account_id", "account_kind",
         "account_reference", "card_last_four", "asset", "amount", "amount_minor", "direction",
         "source", "message_id", "network_reference", "description", "billing_asset",
         "billing_amount", "fx_rate"],
        line("E1", 9, "LOAD", "CUSTOMER", "+10.00", 1_000, "admin", "load-2", "", "top-up", ""),
        line("E1", 9, "LOAD", "CLEARING", "-10.00", -1_000, "admin", "load-2", "", "top-up", ""),
        line("E2", 11, "CLEARING", "CUSTOMER", "-40.00", -4_000, "visa", "clr-1", "NR1", "Shop"),
        line("E2", 11, "CLEARING", "CLEARING", "+40.00", 4_000, "visa", "clr-1", "NR1", "Shop"),
        line("E3", 11, "FEE", "CUSTOMER", "-0.50", -50, "visa", "clr-1", "NR1", "clearing fee"),
        line("E3", 11, "FEE", "FEE_INCOME", "+0.50", 50, "visa", "clr-1", "NR1",
             "clearing fee"),
        line("E4", 12, "REFUND", "CUSTOMER", "+5.00", 500, "visa", "ref-1", "NR2", "Shop"),
        line("E4", 12, "REFUND", "CLEARING", "-5.00", -500, "visa", "ref-1", "NR2", "Shop"),
        line("E5", 13, "DISPUTE_OPEN", "CUSTOMER", "+40.00", 4_000, "admin", "dsp-1", "NR1",
             "dispute DISPUTE open"),
        line("E5", 13, "DISPUTE_OPEN", "DISPUTES", "-40.00", -4_000, "admin", "dsp-1", "NR1",
             "dispute DISPUTE open"),
        line("E6", 14, "DISPUTE_CHARGEBACK", "CLEARING", "-40.00", -4_000, "visa", "cb-1",
             "NR1", "dispute DISPUTE chargeback"),
        line("E6", 14, "DISPUTE_CHARGEBACK", "DISPUTES", "+40.00", 4_000, "visa", "cb-1", "NR1",
             "dispute DISPUTE chargeback"),
    ]  # fmt: skip


async def test_golden_transaction_file(small_day: SmallDay, tmp_path: Path) -> None:
    s = small_day
    assert s.app.pool is not None
    name, lines = await ReportWriter(ReportStore(s.app.pool)).transactions(
        DirectorySink(tmp_path), program_id=s.program_id, day=DAY
    )
    assert name == f"transactions-{s.program_id}-{DAY:%Y%m%d}.csv"
    assert [p.name for p in tmp_path.iterdir()] == [name]
    text = (tmp_path / name).read_text()
    assert normalised(text, s.labels, ("entry_id",)) == _golden_transactions(DAY, s.card.pan[-4:])
    assert lines == 12
    # Every entry balances: its lines sum to zero.
    totals: dict[str, int] = {}
    for row in csv.DictReader(io.StringIO(text)):
        totals[row["entry_id"]] = totals.get(row["entry_id"], 0) + int(row["amount_minor"])
    assert set(totals.values()) == {0}


async def test_golden_chargeback_file(small_day: SmallDay, tmp_path: Path) -> None:
    s = small_day
    assert s.app.pool is not None
    writer = ReportWriter(ReportStore(s.app.pool))
    files = {}
    for day in (DAY, DAY + timedelta(days=1)):
        name, _ = await writer.chargebacks(
            DirectorySink(tmp_path), program_id=s.program_id, day=day
        )
        files[day] = normalised((tmp_path / name).read_text(), s.labels, ("event_id", "entry_id"))
    four, d, d2 = s.card.pan[-4:], f"{DAY:%Y-%m-%d}", f"{DAY + timedelta(days=1):%Y-%m-%d}"
    tail = ["GBP", "CUSTOMER", four, "visa", "clr-1", "NR1"]
    assert files[DAY] == [
        ["event_id", "occurred_at", "business_date", "dispute_id", "step", "from_status",
         "to_status", "reason_code", "amount", "amount_minor", "asset", "account_id",
         "card_last_four", "clearing_source", "clearing_message_id", "network_reference",
         "entry_id", "source", "message_id"],
        ["E1", f"{d}T13:00:00.000Z", d, "DISPUTE", "OPEN", "", "OPEN", "13.1", "+40.00",
         "4000", *tail, "E1", "admin", "dsp-1"],
        ["E2", f"{d}T14:00:00.000Z", d, "DISPUTE", "CHARGEBACK", "OPEN", "CHARGEBACK_SENT",
         "13.1", "+40.00", "4000", *tail, "E2", "visa", "cb-1"],
    ]  # fmt: skip
    assert files[DAY + timedelta(days=1)][1:] == [
        ["E1", f"{d2}T12:00:00.000Z", d2, "DISPUTE", "REPRESENTMENT", "CHARGEBACK_SENT",
         "REPRESENTED", "13.1", "+40.00", "4000", *tail, "E1", "visa", "rp-1"],
    ]  # fmt: skip


async def _schedule(ledger: Ledger, **fields: object) -> la.FileSchedule:
    response = await ledger.admin.CreateFileSchedule(
        la.CreateFileScheduleRequest(schedule=la.FileSchedule(**fields))  # type: ignore[arg-type]
    )
    return response.schedule


async def test_schedules_are_checked_and_refusals_write_nothing(
    small_day: SmallDay, tmp_path: Path
) -> None:
    s = small_day
    assert s.app.pool is not None
    before = await s.app.pool.fetchval("SELECT count(*) FROM file_schedules")
    good = {
        "kind": la.FILE_KIND_TRANSACTIONS, "program_id": s.program_id, "cron": "30 2 * * *",
        "directory": str(tmp_path),
    }  # fmt: skip
    sftp = la.SftpDestination(host="h", username="u", key_secret="k", known_hosts_secret="kh")
    bad: list[dict[str, object]] = [
        {"cron": "30 2 * *"}, {"cron": "0 0 0 * * *"}, {"cron": "61 2 * * *"},
        {"time_zone": "Mars/Olympus"}, {"directory": "relative/dir"},
        {"kind": la.FILE_KIND_UNSPECIFIED}, {"program_id": "nope"},
        {"client_id": str(uuid.uuid4())}, {"prefix": "P"},
        {"kind": la.FILE_KIND_BALANCES},  # a balance report belongs to a client
        {"directory": None, "sftp": la.SftpDestination(host="h", username="u")},
        {"directory": None},
    ]  # fmt: skip
    for change in bad:
        fields = {**good, **change}
        fields = {k: v for k, v in fields.items() if v is not None}
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _schedule(s.ledger, **fields)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, change
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await _schedule(s.ledger, **{**good, "program_id": str(uuid.uuid4())})
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert await s.app.pool.fetchval("SELECT count(*) FROM file_schedules") == before
    created = await _schedule(
        s.ledger, kind=la.FILE_KIND_CHARGEBACKS, program_id=s.program_id, cron="0 3 * * 1",
        sftp=sftp,
    )  # fmt: skip
    assert created.time_zone == "Europe/London"  # the program's
    assert created.sftp.port == 22
    assert created.sftp.remote_dir == "."
    listed = await s.ledger.admin.ListFileSchedules(
        la.ListFileSchedulesRequest(program_id=s.program_id)
    )
    assert created in listed.schedules
    await s.ledger.admin.SetFileScheduleEnabled(
        la.SetFileScheduleEnabledRequest(schedule_id=created.schedule_id, enabled=False)
    )


async def test_directory_delivery_once_per_due_time_with_catch_up(
    small_day: SmallDay, stores: Stores, tmp_path: Path
) -> None:
    s = small_day
    assert s.app.pool is not None
    out = tmp_path / "out"
    s.clock.set(at(DAY, 15))
    schedule = await _schedule(
        s.ledger, kind=la.FILE_KIND_TRANSACTIONS, program_id=s.program_id, cron="30 2 * * *",
        directory=str(out),
    )  # fmt: skip
    deliveries = FileDeliveries(
        FileScheduleStore(s.app.pool),
        ReportWriter(ReportStore(s.app.pool)),
        SecretStore(None),
        s.clock,
        tmp_path / "spool",
    )

    async def run() -> int:
        return await deliveries.run_due(schedule_id=schedule.schedule_id)

    s.clock.set(at(DAY + timedelta(days=1), 1))
    assert await run() == 0  # not due yet (02:30 London)
    s.clock.set(at(DAY + timedelta(days=1), 3))
    assert await run() == 1
    assert await run() == 0  # nothing twice
    expected = f"transactions-{s.program_id}-{DAY:%Y%m%d}.csv"
    assert sorted(p.name for p in out.iterdir()) == [expected]
    text = (out / expected).read_text()
    assert normalised(text, s.labels, ("entry_id",)) == _golden_transactions(DAY, s.card.pan[-4:])
    assert list((tmp_path / "spool").iterdir()) == []  # the spool is cleaned up
    # Down for a while: the missed days are caught up, each once.
    s.clock.set(datetime.now(UTC))
    caught_up = await run()
    assert caught_up >= 1
    days = sorted(p.name for p in out.iterdir())
    assert len(days) == 1 + caught_up
    assert await run() == 0
    row = await s.app.pool.fetchrow(
        """SELECT count(*), count(delivered_at), sum(attempts) FROM file_deliveries
           WHERE schedule_id = $1""",
        schedule.schedule_id,
    )
    assert row is not None
    assert tuple(row) == (len(days), len(days), len(days))
    # Another process (the CLI, by the real clock) finds nothing left to send.
    result = run_cli(
        stores, "files", "run", "--schedule", schedule.schedule_id,
        env={"AUTHSWITCH_DATA_DIR": str(tmp_path / "cli")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "delivered 0 file(s)" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == days


async def test_a_failed_delivery_is_retried_after_backoff(
    small_day: SmallDay, tmp_path: Path
) -> None:
    s = small_day
    assert s.app.pool is not None
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory should be")
    s.clock.set(at(DAY, 16))
    schedule = await _schedule(
        s.ledger, kind=la.FILE_KIND_CHARGEBACKS, program_id=s.program_id, cron="0 4 * * *",
        directory=str(blocked / "out"),
    )  # fmt: skip
    deliveries = FileDeliveries(
        FileScheduleStore(s.app.pool),
        ReportWriter(ReportStore(s.app.pool)),
        SecretStore(None),
        s.clock,
        tmp_path / "spool",
    )
    s.clock.set(at(DAY + timedelta(days=1), 5))
    assert await deliveries.run_due(schedule_id=schedule.schedule_id) == 0
    row = await s.app.pool.fetchrow(
        """SELECT attempts, last_error, next_attempt_at, delivered_at FROM file_deliveries
           WHERE schedule_id = $1""",
        schedule.schedule_id,
    )
    assert row is not None
    assert row["attempts"] == 1
    assert row["delivered_at"] is None
    assert "NotADirectoryError" in row["last_error"] or "FileExistsError" in row["last_error"]
    assert row["next_attempt_at"] > s.clock.now()
    assert await deliveries.run_due(schedule_id=schedule.schedule_id) == 0  # backing off
    blocked.unlink()
    s.clock.set(row["next_attempt_at"])
    assert await deliveries.run_due(schedule_id=schedule.schedule_id) == 1
    name = f"chargebacks-{s.program_id}-{DAY:%Y%m%d}.csv"
    assert [p.name for p in (blocked / "out").iterdir()] == [name]


async def test_schedule_and_list_commands(app: Application, ledger: Ledger, stores: Stores) -> None:
    program_id = await ledger.program()
    target = f"127.0.0.1:{app.grpc_port}"

    async def cli(*args: str) -> subprocess.CompletedProcess[str]:
        # In a thread: the server answering it runs on this event loop.
        return await asyncio.to_thread(run_cli, stores, "files", *args, "--target", target)

    created = await cli(
        "schedule", "--kind", "transactions", "--program", program_id, "--cron", "30 2 * * *",
        "--sftp", "bank@sftp.example:2222/inbound", "--key-secret", "bank-key",
        "--known-hosts-secret", "bank-hosts",
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    assert "transactions" in created.stdout
    assert "sftp://bank@sftp.example:2222/inbound" in created.stdout
    schedule_id = created.stdout.split()[0]
    listed = await cli("list", "--program", program_id)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split()[0] == schedule_id
    assert "Europe/London" in listed.stdout
    refused = await cli(
        "schedule", "--kind", "chargebacks", "--program", program_id, "--cron", "every day",
        "--directory", "/tmp/out",
    )  # fmt: skip
    assert refused.returncode == 2
    assert "INVALID_ARGUMENT" in refused.stderr
    malformed = await cli(
        "schedule", "--kind", "fbo", "--program", program_id, "--cron", "0 3 * * *",
        "--sftp", "no-user-here",
    )  # fmt: skip
    assert malformed.returncode == 2
    assert "USER@HOST" in malformed.stderr


async def test_sftp_delivery_survives_a_failing_server_and_sends_once(
    small_day: SmallDay, tmp_path: Path
) -> None:
    s = small_day
    assert s.app.pool is not None
    async with serve_sftp(tmp_path / "bank") as server:
        (server.root / "inbound").mkdir()
        proxy = FaultProxy((server.host, server.port))
        await proxy.start()
        try:
            secrets = tmp_path / "secrets"
            secrets.mkdir()
            (secrets / "bank-key").write_bytes(server.client_key)
            (secrets / "bank-hosts").write_bytes(server.known_hosts_for(proxy.port))
            s.clock.set(at(DAY, 17))
            schedule = await _schedule(
                s.ledger, kind=la.FILE_KIND_TRANSACTIONS, program_id=s.program_id,
                cron="0 6 * * *",
                sftp=la.SftpDestination(
                    host=server.host, port=proxy.port, username="issuer",
                    key_secret="bank-key", known_hosts_secret="bank-hosts",
                    remote_dir="inbound",
                ),
            )  # fmt: skip
            deliveries = FileDeliveries(
                FileScheduleStore(s.app.pool), ReportWriter(ReportStore(s.app.pool)),
                SecretStore(secrets), s.clock, tmp_path / "spool",
                DeliverySettings(sftp_attempts=2, sftp_backoff_initial_ms=1,
                                 sftp_backoff_max_ms=2),
            )  # fmt: skip

            async def run() -> int:
                return await deliveries.run_due(schedule_id=schedule.schedule_id)

            proxy.cut_after(0, times=2)  # every try of the first delivery is dropped
            s.clock.set(at(DAY + timedelta(days=1), 7))
            assert await run() == 0
            row = await s.app.pool.fetchrow(
                """SELECT attempts, last_error, next_attempt_at FROM file_deliveries
                   WHERE schedule_id = $1""",
                schedule.schedule_id,
            )
            assert row is not None
            assert row["attempts"] == 1
            assert "DeliveryError" in row["last_error"]
            assert "bank-key" not in row["last_error"]
            assert list((server.root / "inbound").iterdir()) == []  # nothing, not a part
            s.clock.set(row["next_attempt_at"])
            assert await run() == 1
            name = f"transactions-{s.program_id}-{DAY:%Y%m%d}.csv"
            delivered = server.root / "inbound"
            assert [p.name for p in delivered.iterdir()] == [name]
            assert normalised(
                (delivered / name).read_text(), s.labels, ("entry_id",)
            ) == _golden_transactions(DAY, s.card.pan[-4:])
            connections = server.connections
            assert await run() == 0  # a rerun sends nothing
            assert server.connections == connections
            destination = await s.app.pool.fetchval(
                "SELECT destination FROM file_deliveries WHERE schedule_id = $1",
                schedule.schedule_id,
            )
            assert destination == f"sftp://issuer@127.0.0.1:{proxy.port}/~/inbound"
        finally:
            await proxy.stop()
