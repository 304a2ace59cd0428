"""Reports read from their own DSN (AUTHSWITCH_REPORTS_POSTGRES_DSN, a read replica in
production): here the test Postgres seen through a TCP proxy, so the test can tell which
connection a report uses by stalling or refusing the proxy. The switch's own path never
touches it, and nothing is ever written through it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from authswitch.adapters.postgres import reports
from authswitch.adapters.postgres.reconcile import ReconciliationStore
from authswitch.adapters.postgres.reports import ReportStore
from authswitch.adapters.sinks import DirectorySink
from authswitch.errors import StoreUnavailable
from authswitch.service.clock import ManualClock
from authswitch.service.reconcile import Reconciler
from authswitch.service.reports import ReportWriter
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.cli import run_cli
from tests.support.clocked import clocked_app
from tests.support.proxy import FaultProxy, dsn_through, target_of_dsn
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def replica(stores: Stores) -> AsyncIterator[tuple[FaultProxy, str]]:
    proxy = FaultProxy(target_of_dsn(stores.postgres_dsn))
    await proxy.start()
    try:
        yield proxy, dsn_through(stores.postgres_dsn, proxy.port)
    finally:
        proxy.resume()
        await proxy.stop()


async def test_reports_and_files_read_from_the_reports_dsn(
    stores: Stores, replica: tuple[FaultProxy, str], tmp_path: Path
) -> None:
    proxy, reports_dsn = replica
    clock = ManualClock()
    async with clocked_app(stores, "rpl", clock, reports_postgres_dsn=reports_dsn) as (
        app, ledger, _,
    ):  # fmt: skip
        assert app.pool is not None
        assert app.reports_pool is not None
        # Its connections are told apart in pg_stat_activity by their application name.
        names = {
            r[0] for r in await app.pool.fetch(
                """SELECT application_name FROM pg_stat_activity
                   WHERE datname = current_database()"""
            )
        }  # fmt: skip
        assert {"authswitch", "authswitch-reports"} <= names
        # It only reads: a replica would refuse writes, and so does this pool.
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await app.reports_pool.execute("CREATE TABLE written_to_the_replica (x int)")

        client = await ledger.admin.CreateClient(la.CreateClientRequest(name="replica"))
        program_id = (
            await ledger.admin.CreateProgram(
                la.CreateProgramRequest(
                    client_id=client.client_id, name="r", mode=c.LEDGER_MODE_ON_LEDGER,
                    time_zone="UTC", country="GB",
                )
            )
        ).program_id  # fmt: skip
        card = await ledger.card(account_id=await ledger.account(await ledger.product(program_id)))
        await ledger.credit(card.account_id, 5_000)
        schedule = (
            await ledger.admin.CreateFileSchedule(
                la.CreateFileScheduleRequest(
                    schedule=la.FileSchedule(
                        kind=la.FILE_KIND_BALANCES, client_id=client.client_id, prefix="RPL",
                        cron="* * * * *", directory=str(tmp_path),
                    )
                )
            )
        ).schedule  # fmt: skip

        clock.advance(timedelta(minutes=2))  # the schedule's first minute is due
        # The replica stalls: the file waits for it, the switch does not.
        with _stalled(proxy):
            delivery = asyncio.ensure_future(
                app.deliveries.run_due(schedule_id=schedule.schedule_id)
            )
            await asyncio.sleep(0.5)
            assert not delivery.done()
            assert (await ledger.authorize(card, 1_000)).response_code == "00"
        assert await asyncio.wait_for(delivery, 30) == 1  # claimed and recorded on the primary
        (written,) = tmp_path.iterdir()
        assert written.name.startswith(f"RPL-accountbalance-{client.client_id}-")

        # Reconciliation reads its snapshot from the replica, compares the cache with the primary.
        reconciler = Reconciler(
            ReconciliationStore(app.pool, snapshot_pool=app.reports_pool), app.cache, clock
        )
        with _stalled(proxy):
            run = asyncio.ensure_future(reconciler.run(program_id=program_id))
            await asyncio.sleep(0.3)
            assert not run.done()
        assert (await asyncio.wait_for(run, 30)).ok

        # A report writer on a pool that is not a standby does not wait for one.
        writer = ReportWriter(ReportStore(app.reports_pool, primary=app.pool))
        (tmp_path / "direct").mkdir()
        _, count = await writer.balance_report(
            DirectorySink(tmp_path / "direct"), client_id=client.client_id, prefix="RPL",
            at=clock.now(),
        )  # fmt: skip
        assert count == 1


@contextlib.contextmanager
def _stalled(proxy: FaultProxy) -> Iterator[None]:
    proxy.stall()
    try:
        yield
    finally:
        proxy.resume()


async def test_report_commands_use_the_reports_dsn(
    stores: Stores, replica: tuple[FaultProxy, str], tmp_path: Path
) -> None:
    proxy, reports_dsn = replica
    clock = ManualClock()
    async with clocked_app(stores, "rpc", clock) as (_, ledger, _):
        client = await ledger.admin.CreateClient(la.CreateClientRequest(name="cli"))
    env = {"AUTHSWITCH_REPORTS_POSTGRES_DSN": reports_dsn}
    args = ("report", "balances", "--client", client.client_id, "--prefix", "CLI")
    # The command runs in a thread: the proxy lives on this event loop.
    proxy.refuse = True
    refused = await asyncio.to_thread(
        run_cli, stores, *args, "--out", str(tmp_path / "refused"), env=env
    )
    assert refused.returncode != 0
    assert not (tmp_path / "refused").exists() or not any((tmp_path / "refused").iterdir())
    proxy.refuse = False
    done = await asyncio.to_thread(run_cli, stores, *args, "--out", str(tmp_path / "ok"), env=env)
    assert done.returncode == 0, done.stderr
    reconcile = ("reconcile", "--json")
    proxy.refuse = True
    assert (await asyncio.to_thread(run_cli, stores, *reconcile, env=env)).returncode != 0
    proxy.refuse = False
    checked = await asyncio.to_thread(run_cli, stores, *reconcile, env=env)
    assert checked.returncode in (0, 1), checked.stderr  # 1: another test's deliberate break
    assert '"checked"' in checked.stdout


async def test_a_replica_that_lags_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """Against a hot standby, a report first waits until the standby has replayed the
    primary's WAL as of the moment it was asked for; and gives up, failing, after a bound."""
    answers: list[object] = []

    class Standby:
        async def fetchval(self, query: str, *args: object) -> object:
            if "pg_is_in_recovery" in query:
                return True
            assert args == ("0/3000060",)
            return answers.pop(0) if answers else False

    class Primary:
        async def fetchval(self, query: str) -> object:
            assert "pg_current_wal_lsn" in query
            return "0/3000060"

    store = ReportStore(Standby(), primary=Primary())  # type: ignore[arg-type]
    monkeypatch.setattr(reports, "REPLICA_POLL_S", 0.01)
    answers[:] = [False, False, True]
    await store._caught_up(Standby())
    assert answers == []
    monkeypatch.setattr(reports, "REPLICA_CATCH_UP_MAX_S", 0.1)
    with pytest.raises(StoreUnavailable, match="has not replayed"):
        await store._caught_up(Standby())
