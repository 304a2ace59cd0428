"""Three ``authswitch serve`` processes on one Postgres and one Redis, as a deployment with
three replicas runs: concurrent load on one account through all three never overspends,
the age-off sweepers of all three release each hold once, and the outbox workers of all
three deliver each notification once, under its one id."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import grpc
import pytest

from authswitch.adapters.postgres.reconcile import ReconciliationStore
from authswitch.adapters.redis.cache import LedgerCache
from authswitch.adapters.redis.pipeline import PipelinedRedis, address_from_url
from authswitch.reference_client import ReferenceClient, serve_reference_client
from authswitch.service.clock import SystemClock
from authswitch.service.reconcile import Reconciler
from authswitch.v1 import authorization_pb2 as pb
from authswitch.v1 import common_pb2 as c
from authswitch.v1 import ledger_admin_pb2 as la
from tests.support.ledger import Ledger
from tests.support.server import ServerProcess
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(240)

REPLICAS = 3
TOKEN = "replica-client-token"


async def _eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not so within {timeout_s}s")
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[tuple[ReferenceClient, int]]:
    reference = ReferenceClient(token=TOKEN)
    server, port = await serve_reference_client(reference, "127.0.0.1:0")
    try:
        yield reference, port
    finally:
        await server.stop(1)


@pytest.fixture(scope="module")
async def replicas(stores: Stores, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[
    list[Ledger]
]:  # fmt: skip
    logs = tmp_path_factory.mktemp("replicas")
    servers = [
        ServerProcess(
            stores,
            logs / f"replica-{i}.log",
            prefix=stores.redis_prefix + "r3",
            age_off_interval_s="0.2",
            outbox_poll_ms="50",
            secret_replica_client_token=TOKEN,
            data_dir=str(logs / f"data-{i}"),
        )
        for i in range(REPLICAS)
    ]
    channels: list[grpc.aio.Channel] = []
    try:
        for server in servers:
            server.start()
        for server in servers:
            await server.wait_serving()
        channels = [grpc.aio.insecure_channel(s.target) for s in servers]
        yield [Ledger(channel) for channel in channels]
        for server in servers:
            server.signal()
        assert [await s.wait_exit() for s in servers] == [0] * REPLICAS
    finally:
        for channel in channels:
            await channel.close(None)  # no grace, as the default (grpc-stubs has none)
        for server in servers:
            server.kill()


@pytest.fixture(scope="module")
async def pool(stores: Stores) -> AsyncIterator[asyncpg.Pool[asyncpg.Record]]:
    opened = await asyncpg.create_pool(stores.postgres_dsn, min_size=1, max_size=2)
    assert opened is not None
    try:
        yield opened
    finally:
        await opened.close()


async def test_no_overspend_and_each_hold_ages_off_once(
    replicas: list[Ledger], pool: asyncpg.Pool[asyncpg.Record], stores: Stores
) -> None:
    card = await replicas[0].card(10_000)
    # 300 authorisations of 1.00 on a 100.00 account, spread over the three replicas.
    responses = await asyncio.gather(
        *(replicas[i % REPLICAS].authorize(card, 100) for i in range(300))
    )
    codes = [r.response_code for r in responses]
    assert set(codes) <= {"00", "51"}, codes
    approved = codes.count("00")
    assert 0 < approved <= 100
    actual, available, authorized = await replicas[1].figures(card.account_id)
    assert (actual, authorized) == (10_000, approved * 100)  # every approval, and only they
    assert available >= 0
    # The holds expire: every replica's sweeper runs every 0.2 s; each hold ends once.
    await pool.execute(
        """UPDATE holds SET expires_at = now() - interval '1 second'
           WHERE account_id = $1 AND status = 'OPEN'""",
        card.account_id,
    )

    async def all_aged_off() -> bool:
        left: int = await pool.fetchval(
            "SELECT count(*) FROM holds WHERE account_id = $1 AND status = 'OPEN'",
            card.account_id,
        )
        return left == 0

    await _eventually(all_aged_off)
    releases = await pool.fetch(
        """SELECT message_id, count(*) FROM decisions
           WHERE source = 'system' AND message_id LIKE 'ageoff:%' AND account_id = $1
           GROUP BY message_id""",
        card.account_id,
    )
    assert len(releases) == approved
    ended = await pool.fetchval(
        """SELECT count(*) FROM hold_events e JOIN holds h ON h.id = e.hold_id
           WHERE h.account_id = $1 AND e.kind = 'AGE_OFF'""",
        card.account_id,
    )
    assert ended == approved
    assert await replicas[2].figures(card.account_id) == (10_000, 10_000, 0)
    # Redis agrees with Postgres for that account, whichever replica loaded it last.
    redis = PipelinedRedis(address_from_url(stores.redis_url), timeout_s=5.0)
    try:
        cache = LedgerCache(redis, stores.redis_prefix + "r3", marker_ttl_s=60)
        account = await pool.fetchval(
            "SELECT program_id::text FROM accounts WHERE id = $1", card.account_id
        )
        report = await Reconciler(ReconciliationStore(pool), cache, SystemClock()).run(
            program_id=account
        )
        assert report.ok, report.to_text()
    finally:
        await redis.aclose()


async def test_each_notification_is_delivered_once_under_its_id(
    replicas: list[Ledger],
    client: tuple[ReferenceClient, int],
    pool: asyncpg.Pool[asyncpg.Record],
) -> None:
    reference, port = client
    ledger = replicas[0]
    program_id = await ledger.program(c.LEDGER_MODE_OFF_LEDGER)
    await ledger.admin.SetProgramRouting(
        la.SetProgramRoutingRequest(
            program_id=program_id, target=f"127.0.0.1:{port}", tls=la.CLIENT_TLS_NONE,
            token_secret="replica-client-token", deadline_ms=1_000,
            stand_in=la.STAND_IN_POLICY_DECLINE,
        )
    )  # fmt: skip
    await ledger.admin.SetNotificationSink(
        la.SetNotificationSinkRequest(program_id=program_id, sink=la.NOTIFICATION_SINK_CLIENT)
    )
    product_id = await ledger.product(program_id)
    card = await ledger.card(account_id=await ledger.account(product_id))
    # Clearings and refunds through all three replicas: each becomes a notification.
    calls: list[Awaitable[pb.ClearResponse | pb.RefundResponse]] = [
        replicas[i % REPLICAS].clear(card, str(uuid.uuid4()), 100 + i)
        if i % 2
        else replicas[i % REPLICAS].refund(card, 100 + i)
        for i in range(60)
    ]
    sent = await asyncio.gather(*calls)
    assert {r.response_code for r in sent} == {"00"}
    expected = {
        r[0]
        for r in await pool.fetch(
            "SELECT id::text FROM notifications WHERE program_id = $1", program_id
        )
    }
    assert len(expected) == 60

    async def all_delivered() -> bool:
        return expected <= set(reference.applied)

    await _eventually(all_delivered)
    mine = {n: count for n, count in reference.deliveries.items() if n in expected}
    assert set(mine) == expected  # none lost, none under another id
    assert set(mine.values()) == {1}, mine  # and no two replicas sent the same one
