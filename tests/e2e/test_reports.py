"""Reports (seed 003's balance report, seed 002's sponsor-bank files) and reconciliation,
against a small ledger built through the real API."""

from __future__ import annotations

import csv
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from authswitch.adapters.postgres.reconcile import ReconciliationStore
from authswitch.adapters.postgres.reports import ReportStore
from authswitch.adapters.sinks import DirectorySink
from authswitch.app import Application
from authswitch.service.clock import ManualClock
from authswitch.service.reconcile import Reconciler, read_fbo_file
from authswitch.service.reports import ReportWriter, ScheduledReports
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.cli import run_cli
from tests.support.ledger import Ledger
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(120)

AT = datetime(2026, 11, 23, 10, 58, 46, tzinfo=UTC)
PROFILE = "1f7e708f-894f-4378-9996-7db63a1e5976"


async def small_ledger(ledger: Ledger) -> dict[str, str]:
    """One client with a GBP account (100.00, 30.00 held), a GBP+EUR multi-currency account
    and a BTC account overdrawn by an adjustment."""
    client = await ledger.admin.CreateClient(la.CreateClientRequest(name="Report client"))
    program = await ledger.admin.CreateProgram(
        la.CreateProgramRequest(
            client_id=client.client_id, name="Reports", mode=c.LEDGER_MODE_ON_LEDGER,
            time_zone="Europe/London", country="GB",
        )
    )  # fmt: skip
    product_id = await ledger.product(program.program_id, assets=["GBP", "EUR", "BTC"])
    single = await ledger.admin.CreateAccount(
        la.CreateAccountRequest(
            product_id=product_id, account_type=c.ACCOUNT_TYPE_SINGLE, assets=["GBP"],
            name="Procurement", reference="CLOWD90001", profile_id=PROFILE,
        )
    )  # fmt: skip
    multi = await ledger.admin.CreateAccount(
        la.CreateAccountRequest(
            product_id=product_id, account_type=c.ACCOUNT_TYPE_MULTI_CURRENCY,
            assets=["EUR", "GBP"], name="Travel", reference="CLOWD90002",
        )
    )  # fmt: skip
    crypto = await ledger.admin.CreateAccount(
        la.CreateAccountRequest(
            product_id=product_id, account_type=c.ACCOUNT_TYPE_SINGLE, assets=["BTC"],
            name="Coins", reference="CLOWD90003",
        )
    )  # fmt: skip
    await ledger.credit(single.account_id, 10_000)
    card = await ledger.card(account_id=single.account_id)
    assert (await ledger.authorize(card, 3_000)).response_code == "00"
    await ledger.credit(multi.account_id, 2_550, "EUR")
    await ledger.admin.DebitAccount(
        la.DebitAccountRequest(
            account_id=crypto.account_id, amount=c.Money(amount_minor=4_000, asset="BTC"),
            purpose=la.ADJUSTMENT_PURPOSE_DEBIT_ADJUSTMENT, idempotency_key=str(uuid.uuid4()),
            allow_negative=True,
        )
    )  # fmt: skip
    return {
        "client": client.client_id, "program": program.program_id, "product": product_id,
        "single": single.account_id, "multi": multi.account_id, "crypto": crypto.account_id,
    }  # fmt: skip


async def test_golden_balance_report(ledger: Ledger, app: Application, tmp_path: Path) -> None:
    ids = await small_ledger(ledger)
    assert app.pool is not None
    name, count = await ReportWriter(ReportStore(app.pool)).balance_report(
        DirectorySink(tmp_path), client_id=ids["client"], prefix="Issuer_1", at=AT
    )
    assert name == f"Issuer_1-accountbalance-{ids['client']}-20261123-105846.json"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left behind
    report = json.loads((tmp_path / name).read_text())
    assert report["file_date_and_time"] == "2026-11-23 105846"
    assert report["total_number_of_records"] == "4" == str(count)
    records = {
        (r["account_id"], r["asset_types"]["asset_type"]): r for r in report["account_balance"]
    }
    assert set(records) == {
        (ids["single"], "826"), (ids["multi"], "978"), (ids["multi"], "826"),
        (ids["crypto"], "BTC"),
    }  # fmt: skip
    assert records[(ids["single"], "826")] == {
        "asset_types": {"asset_type": "826", "category": "FIAT", "hosted": "Internal",
                        "is_base": True},
        "client_id": ids["client"],
        "program_id": ids["program"],
        "product_id": ids["product"],
        "account_profile_id": PROFILE,
        "account_id": ids["single"],
        "account_type": "Single",
        "account_name": "Procurement",
        "account_reference": "CLOWD90001",
        "actual_balance": "+100.00",
        "available_balance": "+70.00",
        "debit_reservation": "30.00",
    }  # fmt: skip
    euro, sterling = records[(ids["multi"], "978")], records[(ids["multi"], "826")]
    assert euro["account_type"] == sterling["account_type"] == "Multi-Currency"
    assert (euro["asset_types"]["is_base"], sterling["asset_types"]["is_base"]) == (True, False)
    assert (euro["actual_balance"], sterling["actual_balance"]) == ("+25.50", "+0.00")
    coins = records[(ids["crypto"], "BTC")]
    assert coins["asset_types"]["category"] == "CRYPTO"
    assert (coins["actual_balance"], coins["available_balance"]) == ("-0.00004000", "-0.00004000")
    assert coins["debit_reservation"] == "0.00000000"


async def test_report_command_and_its_errors(
    ledger: Ledger, stores: Stores, tmp_path: Path
) -> None:
    ids = await small_ledger(ledger)
    done = run_cli(stores, "report", "balances", "--client", ids["client"], "--prefix", "ACME",
                "--out", str(tmp_path / "ok"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    (written,) = (tmp_path / "ok").iterdir()
    assert written.name.startswith(f"ACME-accountbalance-{ids['client']}-")
    for args, message in (
        (["--client", str(uuid.uuid4()), "--prefix", "ACME"], "does not exist"),
        (["--client", "not-a-client", "--prefix", "ACME"], "does not exist"),
        (["--client", ids["client"], "--prefix", "TOO_LONG_PREFIX_X"], "prefix"),
        (["--client", ids["client"], "--prefix", "bad-dash"], "prefix"),
    ):
        out = tmp_path / "bad"
        failed = run_cli(stores, "report", "balances", *args, "--out", str(out))
        assert failed.returncode == 2
        assert message in failed.stderr
        assert not out.exists() or not any(out.iterdir())  # no partial file


async def test_subledger_net_changes(ledger: Ledger, app: Application, tmp_path: Path) -> None:
    ids = await small_ledger(ledger)
    assert app.pool is not None
    today = datetime.now(UTC).astimezone().date()
    name, lines = await ReportWriter(ReportStore(app.pool)).subledger_net_changes(
        DirectorySink(tmp_path), program_id=ids["program"], day=today
    )
    rows = list(csv.DictReader((tmp_path / name).read_text().splitlines()))
    by_subledger = {(r["subledger"], r["asset"]): r for r in rows}
    assert by_subledger[(ids["single"], "GBP")]["net_change"] == "+100.00"
    assert by_subledger[(ids["multi"], "EUR")]["net_change"] == "+25.50"
    assert by_subledger[(ids["crypto"], "BTC")]["direction"] == "DEBIT"
    implicit = {r["asset"]: r["net_change"] for r in rows if r["subledger"] == "implicit-clearing"}
    assert implicit == {"BTC": "+0.00004000", "EUR": "-25.50", "GBP": "-100.00"}
    assert lines == 3


async def test_fbo_file_and_reconciliation(
    ledger: Ledger, app: Application, tmp_path: Path
) -> None:
    ids = await small_ledger(ledger)
    assert app.pool is not None
    customer = await ledger.admin.CreateCustomer(
        la.CreateCustomerRequest(program_id=ids["program"])
    )
    partner = await ledger.admin.CreateCustomer(la.CreateCustomerRequest(program_id=ids["program"]))
    joint = await ledger.admin.CreateAccount(
        la.CreateAccountRequest(
            product_id=ids["product"], assets=["GBP"],
            customer_ids=[customer.customer_id, partner.customer_id],
        )
    )  # fmt: skip
    await ledger.credit(joint.account_id, 1_234)
    name, _ = await ReportWriter(ReportStore(app.pool)).fbo_balances(
        DirectorySink(tmp_path), program_id=ids["program"], at=AT
    )
    rows = list(csv.DictReader((tmp_path / name).read_text().splitlines()))
    # Each joint holder is listed with their half of the joint account (equal shares).
    owners = sorted(r["customer_id"] for r in rows if r["balance"] == "+6.17")
    assert owners == sorted([customer.customer_id, partner.customer_id])
    exponents = {"GBP": 2, "EUR": 2, "BTC": 8}
    fbo = read_fbo_file(tmp_path / name, exponents)
    reconciler = Reconciler(ReconciliationStore(app.pool), app.cache, app.clock)
    report = await reconciler.run(program_id=ids["program"], fbo=fbo)
    assert report.ok, report.to_text()
    assert set(report.checked) == {
        "journal_balanced", "balance_equals_postings", "authorized_equals_open_holds",
        "program_closes", "cache_equals_postgres", "fbo_matches",
    }  # fmt: skip
    # The partner's file disagrees on one owner: a break on that owner and on the total.
    key = next(iter(fbo))
    bad = dict(fbo) | {key: fbo[key] + 1}
    broken = await reconciler.run(program_id=ids["program"], fbo=bad)
    assert {b.subject for b in broken.breaks} == {f"{key[0]} {key[1]}", f"total {key[1]}"}


@pytest.mark.parametrize(
    "inject",
    ["journal_balanced", "balance_equals_postings", "authorized_equals_open_holds",
     "cache_equals_postgres"],
)  # fmt: skip
async def test_each_break_is_detected(ledger: Ledger, app: Application, inject: str) -> None:
    ids = await small_ledger(ledger)
    assert app.pool is not None
    reconciler = Reconciler(ReconciliationStore(app.pool), app.cache, app.clock)
    assert (await reconciler.run(program_id=ids["program"])).ok
    account = ids["single"]
    entry = str(uuid.uuid4())
    try:
        await _inject(app, inject, ids["program"], account, entry)
        report = await reconciler.run(program_id=ids["program"])
        assert inject in {b.check for b in report.breaks}, report.to_text()
        found = next(b for b in report.breaks if b.check == inject)
        assert found.drift_minor > 0
        if inject == "journal_balanced":
            assert "program_closes" in {b.check for b in report.breaks}
    finally:
        # Repair, so the damage stays in this test: a whole-database reconciliation of a
        # later test (the reconcile command, say) must not find it.
        await _repair(app, inject, account, entry)
    assert (await reconciler.run(program_id=ids["program"])).ok


async def _inject(app: Application, inject: str, program_id: str, account: str, entry: str) -> None:
    assert app.pool is not None
    if inject == "journal_balanced":
        await app.pool.execute(
            "INSERT INTO journal_entries (id, program_id, kind, created_at) "
            "VALUES ($1, $2, 'X', now())",
            entry, program_id,
        )  # fmt: skip
        await app.pool.execute(
            "INSERT INTO postings VALUES ($1, $2, 'GBP', 5, now())", entry, account
        )
        await app.pool.execute(
            "UPDATE balances SET actual_minor = actual_minor + 5 WHERE account_id = $1", account
        )
    elif inject == "balance_equals_postings":
        await app.pool.execute(
            "UPDATE balances SET actual_minor = actual_minor + 7 WHERE account_id = $1", account
        )
    elif inject == "authorized_equals_open_holds":
        await app.pool.execute(
            "UPDATE holds SET amount_minor = amount_minor - 1 WHERE account_id = $1", account
        )
    else:
        assert app.redis is not None
        await app.redis.hincrby(app.cache.keys.state(account), "a:GBP", 9)


async def _repair(app: Application, inject: str, account: str, entry: str) -> None:
    assert app.pool is not None
    if inject == "journal_balanced":
        await app.pool.execute("DELETE FROM postings WHERE entry_id = $1", entry)
        await app.pool.execute("DELETE FROM journal_entries WHERE id = $1", entry)
        await app.pool.execute(
            "UPDATE balances SET actual_minor = actual_minor - 5 WHERE account_id = $1", account
        )
    elif inject == "balance_equals_postings":
        await app.pool.execute(
            "UPDATE balances SET actual_minor = actual_minor - 7 WHERE account_id = $1", account
        )
    elif inject == "authorized_equals_open_holds":
        await app.pool.execute(
            "UPDATE holds SET amount_minor = amount_minor + 1 WHERE account_id = $1", account
        )
    await app.sync.refresh(account, "test")


async def test_reconcile_command(ledger: Ledger, stores: Stores, tmp_path: Path) -> None:
    ids = await small_ledger(ledger)
    ok = run_cli(stores, "reconcile", "--program", ids["program"], "--json")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    good = tmp_path / "fbo.csv"
    good.write_text("customer_id,asset,balance\nsomeone,GBP,+1.00\n")
    broken = run_cli(stores, "reconcile", "--program", ids["program"], "--fbo-csv", str(good))
    assert broken.returncode == 1
    assert "fbo_matches" in broken.stdout
    for content, message in (
        (b"customer_id,asset,balance\nx,GBP,1.001\n", "decimals"),
        (b"customer_id,asset,balance\nx,ZZZ,1.00\n", "unknown asset"),
        (b"who,what\n1,2\n", "columns"),
        (b"\xff\xfe\x00binary", "UTF-8"),
    ):
        path = tmp_path / "bad.csv"
        path.write_bytes(content)
        failed = run_cli(stores, "reconcile", "--program", ids["program"], "--fbo-csv", str(path))
        assert failed.returncode == 2, failed.stderr
        assert message in failed.stderr
    missing = run_cli(stores, "reconcile", "--fbo-csv", str(tmp_path / "nope.csv"))
    assert missing.returncode == 2


async def test_the_daily_report_is_written_once(
    ledger: Ledger, app: Application, tmp_path: Path
) -> None:
    ids = await small_ledger(ledger)
    assert app.pool is not None
    await ledger.admin.SetBalanceReport(
        la.SetBalanceReportRequest(client_id=ids["client"], prefix="DAILY", enabled=True)
    )
    clock = ManualClock(datetime(2031, 1, 2, 0, 30, tzinfo=UTC))
    scheduled = ScheduledReports(
        ReportWriter(ReportStore(app.pool)), DirectorySink(tmp_path), clock, "01:05"
    )
    assert await scheduled.run_due() == 0  # before 01:05
    clock.set(datetime(2031, 1, 2, 1, 6, tzinfo=UTC))
    assert await scheduled.run_due() >= 1
    assert await scheduled.run_due() == 0  # once a day
    files = [p.name for p in tmp_path.iterdir() if ids["client"] in p.name]
    assert files == [f"DAILY-accountbalance-{ids['client']}-20310102-010600.json"]
