"""authswitch behind a real pgbouncer in transaction pooling mode (docs/scaling.md).

pgbouncer has fewer server connections than the application has client connections, so
consecutive transactions of one client connection run on different server sessions, and one
server session serves many clients: whatever relied on the session (prepared statements,
settings made at connect time, session advisory locks) would break here. Every answer must
still be right, nothing may be lost, and the periodic jobs must still run one at a time.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from authswitch.adapters.postgres.locks import JobLease
from authswitch.adapters.postgres.pool import create_pool
from authswitch.adapters.postgres.reconcile import ReconciliationStore
from authswitch.adapters.postgres.reports import ReportStore
from authswitch.adapters.sinks import DirectorySink
from authswitch.errors import InternalError
from authswitch.reference_client import ReferenceClient, serve_reference_client
from authswitch.service.clock import ManualClock
from authswitch.service.jobs import PeriodicJob
from authswitch.service.reconcile import Reconciler
from authswitch.service.reports import ReportWriter
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.clocked import clocked_app
from tests.support.ledger import Ledger
from tests.support.pgbouncer import Pgbouncer, running_pgbouncer
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(240)

SERVER_CONNECTIONS = 3  # pgbouncer's pool: far fewer than the application's clients
CLIENT_CONNECTIONS = 12


@pytest.fixture(scope="module")
def bouncer(stores: Stores) -> Iterator[Pgbouncer]:
    with running_pgbouncer(stores.postgres_dsn, pool_size=SERVER_CONNECTIONS) as running:
        yield running


@pytest.fixture
async def bouncer_pool(bouncer: Pgbouncer) -> AsyncIterator[asyncpg.Pool[Any]]:
    pool = await create_pool(
        bouncer.dsn, min_size=1, max_size=CLIENT_CONNECTIONS, statement_timeout_ms=5_000,
        pgbouncer=True,
    )  # fmt: skip
    try:
        yield pool
    finally:
        await pool.close()


async def _eventually(check: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not so within {timeout_s}s")
        await asyncio.sleep(0.05)


async def test_session_state_never_outlives_a_transaction(
    bouncer: Pgbouncer, bouncer_pool: asyncpg.Pool[Any]
) -> None:
    # The direct mode's startup settings are refused by pgbouncer: hence the setting.
    with pytest.raises(asyncpg.ProtocolViolationError, match="unsupported startup parameter"):
        await create_pool(bouncer.dsn, min_size=1, max_size=1, statement_timeout_ms=5_000)

    async def one(n: int) -> None:
        # Many statement shapes over few server sessions: a cached prepared statement would
        # be missing (or another's) on the next session.
        assert await bouncer_pool.fetchval(f"SELECT $1::int + {n % 7}", n) == n + n % 7
        assert await bouncer_pool.fetchval("SELECT $1::text || $2::text", "a", str(n)) == f"a{n}"
        async with bouncer_pool.acquire() as conn, conn.transaction():
            # The session settings of the direct mode, made per transaction.
            assert await conn.fetchval("SHOW statement_timeout") == "5s"
            assert await conn.fetchval("SHOW jit") == "off"
            assert await conn.fetchval("SHOW idle_in_transaction_session_timeout") == "10s"
            await conn.fetchval("SELECT pg_sleep(0.001)")
        rows = [r async for r in _cursor(bouncer_pool, n)]
        assert [r[0] for r in rows] == list(range(n % 5 + 1))

    await asyncio.gather(*(one(n) for n in range(200)))

    # A reports pool (read-only, its own application name) through pgbouncer too.
    reports = await create_pool(
        bouncer.dsn, min_size=1, max_size=2, statement_timeout_ms=5_000, pgbouncer=True,
        application_name="authswitch-reports", read_only=True,
    )  # fmt: skip
    try:
        async with reports.acquire() as conn, conn.transaction():
            assert await conn.fetchval("SHOW transaction_read_only") == "on"
            assert await conn.fetchval("SHOW application_name") == "authswitch-reports"
            with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
                await conn.execute("CREATE TABLE written_through_the_reports_pool (x int)")
    finally:
        await reports.close()


async def _cursor(pool: asyncpg.Pool[Any], n: int) -> AsyncIterator[Any]:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read"):
        async for row in conn.cursor("SELECT generate_series(0, $1::int)", n % 5, prefetch=2):
            yield row


async def test_the_switch_behind_pgbouncer(
    bouncer: Pgbouncer, stores: Stores, tmp_path: Path
) -> None:
    reference = ReferenceClient()
    client_server, client_port = await serve_reference_client(reference, "127.0.0.1:0")
    clock = ManualClock()
    try:
        async with clocked_app(
            stores, "pgb", clock, postgres_dsn=bouncer.dsn, postgres_pgbouncer=True,
            postgres_pool_max=CLIENT_CONNECTIONS, outbox_poll_ms=50,
            # Three server connections shared by decisions, a streamed report and a
            # reconciliation: on a loaded test machine a statement may queue for seconds
            # behind them, which is not what this test is about.
            postgres_statement_timeout_ms=30_000,
        ) as (app, ledger, _):  # fmt: skip
            assert app.pool is not None
            await _the_switch_behind_pgbouncer(app, ledger, clock, reference, client_port, tmp_path)
    finally:
        await client_server.stop(1)


async def _the_switch_behind_pgbouncer(
    app: Any, ledger: Ledger, clock: ManualClock, reference: ReferenceClient, client_port: int,
    tmp_path: Path,
) -> None:  # fmt: skip
    # An on-ledger program: a 200.00 card, a card that spends and clears, an account loaded
    # by the admin API, and cards an operator blocks.
    client_id = (await ledger.admin.CreateClient(la.CreateClientRequest(name="pgb"))).client_id
    program_id = (
        await ledger.admin.CreateProgram(
            la.CreateProgramRequest(
                client_id=client_id, name="pgb", mode=c.LEDGER_MODE_ON_LEDGER, country="GB",
                time_zone="Europe/London",
            )
        )
    ).program_id  # fmt: skip
    product_id = await ledger.product(program_id)
    spender = await ledger.card(0, account_id=await ledger.account(product_id))
    await ledger.credit(spender.account_id, 20_000)
    clearer = await ledger.card(account_id=await ledger.account(product_id))
    await ledger.credit(clearer.account_id, 10_000)
    loaded = await ledger.account(product_id)
    blocked = [await ledger.card(0, account_id=await ledger.account(product_id)) for _ in range(5)]
    # An off-ledger program whose notifications go to the reference client.
    off_program = await ledger.program(c.LEDGER_MODE_OFF_LEDGER)
    await ledger.admin.SetProgramRouting(
        la.SetProgramRoutingRequest(
            program_id=off_program, target=f"127.0.0.1:{client_port}", tls=la.CLIENT_TLS_NONE,
            deadline_ms=1_000, stand_in=la.STAND_IN_POLICY_DECLINE,
        )
    )  # fmt: skip
    await ledger.admin.SetNotificationSink(
        la.SetNotificationSinkRequest(program_id=off_program, sink=la.NOTIFICATION_SINK_CLIENT)
    )
    off_card = await ledger.card(account_id=await ledger.account(await ledger.product(off_program)))

    async def spend() -> list[str]:
        # 300 authorisations of 1.00 on 200.00: exactly 200 approved, the rest 51.
        answers = await asyncio.gather(*(ledger.authorize(spender, 100) for _ in range(300)))
        return [a.response_code for a in answers]

    async def clear(n: int) -> tuple[str, str]:
        request = ledger.request(clearer, 200 + n)
        auth = await ledger.auth.Authorize(request)
        cleared = await ledger.clear(clearer, request.network_reference, 150 + n)
        return auth.response_code, cleared.response_code

    async def load(n: int) -> str:
        return "ok" if (await ledger.credit(loaded, 10 + n)).entry_id else "no entry"

    async def block(n: int) -> None:
        await ledger.admin.ChangeCardStatus(
            la.ChangeCardStatusRequest(
                card_id=blocked[n].card_id, status=c.CARD_STATUS_BLOCKED, reason="test"
            )
        )

    async def notify(n: int) -> str:
        answer: pb.ClearResponse | pb.RefundResponse
        if n % 2:
            answer = await ledger.clear(off_card, str(uuid.uuid4()), 100 + n)
        else:
            answer = await ledger.refund(off_card, 100 + n)
        return answer.response_code

    writer = ReportWriter(ReportStore(app.reports_pool or app.pool))
    reconciler = Reconciler(ReconciliationStore(app.pool), app.cache, clock)
    # The four streams of side traffic in one inner gather (typeshed types gather() of at most
    # six awaitables): every task still starts in the same order, all at once.
    spent, (cleared, loads, _, notified), report, reconciled = await asyncio.gather(
        spend(),
        asyncio.gather(
            asyncio.gather(*(clear(n) for n in range(20))),
            asyncio.gather(*(load(n) for n in range(20))),
            asyncio.gather(*(block(n) for n in range(len(blocked)))),
            asyncio.gather(*(notify(n) for n in range(30))),
        ),
        writer.balance_report(
            DirectorySink(tmp_path), client_id=client_id, prefix="PGB", at=clock.now()
        ),
        reconciler.run(program_id=program_id),
    )  # fmt: skip
    assert sorted(set(spent)) == ["00", "51"], set(spent)
    assert spent.count("00") == 200
    assert set(cleared) == {("00", "00")}
    assert set(loads) == {"ok"}
    assert set(notified) == {"00"}
    assert report[1] >= 4  # every customer account of the client, in one snapshot
    assert json.loads((tmp_path / report[0]).read_text())["account_balance"]
    assert reconciled.ok, reconciled.to_text()

    # The figures are exactly what the answers said.
    assert await ledger.figures(spender.account_id) == (20_000, 0, 20_000)
    cleared_total = sum(150 + n for n in range(20))
    assert await ledger.figures(clearer.account_id) == (10_000 - cleared_total,) * 2 + (0,)
    assert (await ledger.figures(loaded))[0] == sum(10 + n for n in range(20))
    for card in blocked:
        got = await ledger.admin.GetCard(la.GetCardRequest(card_id=card.card_id))
        assert got.status == c.CARD_STATUS_BLOCKED

    # The outbox delivered every notification of the off-ledger program, once, under its id.
    # (Before the clock jumps 8 days below: a jump would expire the lease of a delivery in
    # flight, which is then delivered again, as at-least-once allows.)
    expected = {
        r[0] for r in await app.pool.fetch(
            "SELECT id::text FROM notifications WHERE program_id = $1", off_program
        )
    }  # fmt: skip
    assert len(expected) == 30

    async def all_delivered() -> bool:
        return expected <= set(reference.applied)

    await _eventually(all_delivered)
    assert {n: reference.deliveries[n] for n in expected} == dict.fromkeys(expected, 1)

    # Age-off, by the clock: every hold of the spender ends, once.
    clock.advance(timedelta(days=8))
    assert await app.lifecycle.age_off() >= 200
    assert await ledger.figures(spender.account_id) == (20_000, 20_000, 0)
    final = await reconciler.run()
    assert not [b for b in final.breaks if b.check != "cache_equals_postgres"], final.to_text()

    # Partition maintenance through pgbouncer: its locks are taken NOWAIT in savepoints of one
    # transaction, which keeps its server session. (January 2018 is older than any month
    # another test makes, so dropping what is before February 2018 drops only it.)
    store = app.partitions.store
    assert await store.ensure([date(2018, 1, 1)]) == 5
    dropped = await store.retire(date(2018, 2, 1))
    assert {(o.family, o.month, o.dropped) for o in dropped} == {
        (family, date(2018, 1, 1), True) for family in ("holds", "journal", "outbox")
    }


async def test_jobs_run_one_at_a_time_through_pgbouncer(bouncer: Pgbouncer) -> None:
    pools = [
        await create_pool(
            bouncer.dsn, min_size=1, max_size=4, statement_timeout_ms=5_000, pgbouncer=True
        )
        for _ in range(3)
    ]
    name = f"exclusive-{uuid.uuid4()}"
    running: list[int] = []
    runs: list[int] = []

    def work_of(process: int) -> Any:
        async def work() -> int:
            running.append(process)
            assert len(running) == 1, f"two runs at once: {running}"
            await asyncio.sleep(0.02)
            running.remove(process)
            runs.append(process)
            return 1

        return work

    # Three "replicas" of one job, each running every 10 ms, sharing three server sessions.
    jobs = [
        PeriodicJob(name, 0.01, work_of(i), pool, lock_key=0, lease=True, lease_ttl_s=2.0)
        for i, pool in enumerate(pools)
    ]
    try:
        for job in jobs:
            job.start()
        await asyncio.sleep(3.0)
    finally:
        for job in jobs:
            await job.stop()
    assert len(runs) >= 20, runs
    assert len(set(runs)) >= 2, "the lease never passed to another process"

    # A run whose lease is taken away is cancelled before the lease can pass on.
    lease = JobLease(pools[0], f"lost-{uuid.uuid4()}", ttl_s=0.6)
    assert await lease.acquire()
    assert not await JobLease(pools[1], lease.name).acquire()  # held
    cancelled = asyncio.Event()

    async def long_run() -> int:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    async def steal() -> None:
        await asyncio.sleep(0.1)
        await pools[2].execute(
            "UPDATE job_leases SET holder = $2 WHERE name = $1", lease.name, str(uuid.uuid4())
        )

    with pytest.raises(InternalError, match="lost"):
        await asyncio.gather(lease.run(long_run), steal())
    assert cancelled.is_set()
    for pool in pools:
        await pool.close()
