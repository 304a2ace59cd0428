"""Intraday subledger sync (issue 17): a schedule four times a day in a program whose
midnight is not UTC's, a window across midnight whose first delivery fails, a posting that
commits after its window's file was taken, and every change in exactly one file."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from authswitch.adapters.postgres.files import FileScheduleStore
from authswitch.adapters.postgres.reports import ReportStore
from authswitch.secrets import SecretStore
from authswitch.service.files import DeliverySettings, FileDeliveries
from authswitch.service.reports import ReportWriter
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.clocked import clocked_app
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(120)

TOKYO = ZoneInfo("Asia/Tokyo")  # no summer time; its midnight is 15:00 UTC
DAY = (datetime.now(TOKYO) - timedelta(days=3)).date()


def local(days: int, hour: int, minute: int = 0) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, hour, minute, tzinfo=TOKYO) + timedelta(days=days)


def utc_name(program_id: str, at: datetime) -> str:
    return f"subledger-sync-{program_id}-{at.astimezone(UTC):%Y%m%dT%H%M%SZ}.csv"


def net_changes(path: Path) -> dict[str, str]:
    """subledger -> net change, and the window of the file."""
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return {r["subledger"]: r["net_change"] for r in rows}


async def test_each_change_is_in_exactly_one_sync_file(stores: Stores, tmp_path: Path) -> None:
    async with clocked_app(stores, "sync") as (app, ledger, clock):
        assert app.pool is not None
        clock.set(local(0, 15))
        program_id = await ledger.program(time_zone="Asia/Tokyo")
        product_id = await ledger.product(program_id)
        a, b, c = [await ledger.account(product_id) for _ in range(3)]
        card = await ledger.card(account_id=a)
        clock.set(local(0, 16))
        await ledger.credit(a, 100)  # before the schedule: in no sync file
        clock.set(local(0, 17))
        blocked = tmp_path / "out"
        blocked.write_text("a file where the directory should be")
        created = await ledger.admin.CreateFileSchedule(
            la.CreateFileScheduleRequest(
                schedule=la.FileSchedule(
                    kind=la.FILE_KIND_SUBLEDGER_SYNC, program_id=program_id,
                    cron="0 */6 * * *", directory=str(blocked),
                )
            )
        )  # fmt: skip
        schedule_id = created.schedule.schedule_id
        assert created.schedule.time_zone == "Asia/Tokyo"
        day = 24 * 3_600_000  # a failed delivery waits 12 to 24 hours here
        deliveries = FileDeliveries(
            FileScheduleStore(app.pool), ReportWriter(ReportStore(app.pool)), SecretStore(None),
            clock, tmp_path / "spool",
            DeliverySettings(backoff_initial_ms=day, backoff_max_ms=day),
        )  # fmt: skip

        async def run() -> int:
            return await deliveries.run_due(schedule_id=schedule_id)

        clock.set(local(0, 17, 30))
        await ledger.credit(a, 1_000)
        clock.set(local(0, 18, 5))
        blocked.unlink()
        assert await run() == 1  # 17:00 to 18:00
        first = blocked / utc_name(program_id, local(0, 18))
        assert net_changes(first) == {a: "+10.00", "implicit-clearing": "-10.00"}
        blocked.rename(tmp_path / "aside")
        blocked.write_text("blocked again")

        # 18:00 to midnight, Tokyo time (15:00 UTC): its delivery fails.
        clock.set(local(0, 19))
        await ledger.credit(b, 500)
        clock.set(local(0, 23, 30))
        unmatched = await ledger.clear(card, "NR-SYNC", 200)
        assert unmatched.response_code == "00"
        clock.set(local(1, 0, 5))
        assert await run() == 0
        row = await app.pool.fetchrow(
            """SELECT attempts, last_error, next_attempt_at FROM file_deliveries
               WHERE schedule_id = $1 AND delivered_at IS NULL""",
            schedule_id,
        )
        assert row is not None
        assert row["attempts"] == 1
        assert row["last_error"]
        # A posting of 23:50 that commits only now, after the midnight file was taken.
        clock.set(local(0, 23, 50))
        await ledger.credit(c, 300)
        clock.set(local(1, 1))
        await ledger.credit(a, 100)
        # 06:00 is due, but the midnight file is still waiting to be retried: nothing goes
        # out of order.
        clock.set(local(1, 6, 10))
        assert await run() == 0
        assert row["next_attempt_at"] > clock.now()

        blocked.unlink()
        (tmp_path / "aside").rename(blocked)
        clock.set(row["next_attempt_at"])  # 12:05 to the next day 00:05
        delivered = await run()
        assert delivered >= 3  # midnight, 06:00, 12:00 (and maybe 18:00, midnight)
        files = sorted(p.name for p in blocked.iterdir())
        assert len(files) == 1 + delivered
        midnight = net_changes(blocked / utc_name(program_id, local(1, 0)))
        # The midnight file is the one its first attempt took: without the late posting.
        assert midnight == {b: "+5.00", a: "-2.00", "implicit-clearing": "-3.00"}
        morning = net_changes(blocked / utc_name(program_id, local(1, 6)))
        assert morning == {c: "+3.00", a: "+1.00", "implicit-clearing": "-4.00"}
        assert net_changes(blocked / utc_name(program_id, local(1, 12))) == {}
        # Every change since the schedule began is in exactly one file.
        total: dict[str, int] = {}
        for name in files:
            for row_ in csv.DictReader(io.StringIO((blocked / name).read_text())):
                minor = int(Decimal(row_["net_change"]) * 100)
                total[row_["subledger"]] = total.get(row_["subledger"], 0) + minor
        for account in (a, b, c):
            actual, _, _ = await ledger.figures(account)
            assert total[account] == actual - (100 if account == a else 0)
        assert await run() == 0  # nothing twice
        windows = await app.pool.fetchval(
            "SELECT count(*) FROM subledger_sync_windows WHERE schedule_id = $1", schedule_id
        )
        assert windows == 1 + len(files)  # the anchor and one per file
