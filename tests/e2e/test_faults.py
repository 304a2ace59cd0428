"""Faults under load, with real processes (DESIGN.md §5): nothing the caller was told is
approved is lost, nothing is held without a decision record, the cache never lets an account
overspend, and everything recovers without restarting authswitch."""

from __future__ import annotations

import asyncio
import random
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import grpc
import pytest
import redis.asyncio as aioredis

from authswitch.adapters.postgres.reconcile import ReconciliationStore
from authswitch.adapters.redis.pipeline import PipelinedRedis, address_from_url
from authswitch.app import Application
from authswitch.embedded import EmbeddedRedis
from authswitch.service.reconcile import Reconciler
from authswitch.v1 import authorization_pb2 as pb
from tests.conftest import TEST_KEYS, settings_for
from tests.support.ledger import IssuedCard, Ledger
from tests.support.proxy import FaultProxy, dsn_through, target_of_dsn
from tests.support.server import ServerProcess
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(240)


async def _durability(dsn: str, account_id: str, approved: set[str]) -> None:
    """Every approval a caller received has its hold and decision; no hold lacks a
    decision; the authorised balance is the sum of open holds."""
    conn = await asyncpg.connect(dsn)
    try:
        held = {
            r[0] for r in await conn.fetch(
                "SELECT h.message_id FROM holds h JOIN decisions d USING (source, message_id) "
                "WHERE h.account_id = $1 AND d.response_code IN ('00', '10')", account_id,
            )
        }  # fmt: skip
        orphans = await conn.fetchval(
            "SELECT count(*) FROM holds h LEFT JOIN decisions d USING (source, message_id) "
            "WHERE h.account_id = $1 AND d.message_id IS NULL",
            account_id,
        )
        row = await conn.fetchrow(
            "SELECT b.authorized_minor, (SELECT coalesce(sum(amount_minor), 0) FROM holds "
            "WHERE account_id = $1 AND status = 'OPEN'), b.actual_minor "
            "FROM balances b WHERE b.account_id = $1",
            account_id,
        )
        assert row is not None
        authorized, open_holds, actual = row
    finally:
        await conn.close()
    assert approved <= held, f"{len(approved - held)} approvals the caller saw are not durable"
    assert orphans == 0
    assert authorized == open_holds
    assert authorized <= actual, "overspent"


def _outcomes(
    requests: list[pb.AuthorizeRequest], results: list[object]
) -> tuple[set[str], list[str]]:
    approved = {
        r.message_id
        for r, res in zip(requests, results, strict=True)
        if isinstance(res, pb.AuthorizeResponse) and res.response_code == "00"
    }
    codes = [res.response_code for res in results if isinstance(res, pb.AuthorizeResponse)]
    return approved, codes


# -- a crash --------------------------------------------------------------------------------


async def test_sigkill_mid_load_then_restart(stores: Stores, tmp_path: Path) -> None:
    server = ServerProcess(stores, tmp_path / "serve.log", group_commit_linger_us="1000")
    server.start()
    try:
        await server.wait_serving()
        async with grpc.aio.insecure_channel(server.target) as channel:
            ledger = Ledger(channel)
            card = await ledger.card(1_000_000)
            requests = [ledger.request(card, 100) for _ in range(400)]
            calls = [asyncio.ensure_future(ledger.auth.Authorize(r, timeout=10)) for r in requests]
            await asyncio.sleep(0.15)
            server.signal(signal.SIGKILL)
            results = await asyncio.gather(*calls, return_exceptions=True)
        await server.wait_exit()
        approved, _ = _outcomes(requests, list(results))
        await _durability(stores.postgres_dsn, card.account_id, approved)

        # A new process: the crashed one's reservations in Redis never count, the account
        # is reloaded from Postgres, and its retransmissions get their original answers.
        restarted = ServerProcess(stores, tmp_path / "restart.log")
        restarted.port = server.port
        restarted.env = server.env
        restarted.start()
        try:
            await restarted.wait_serving()
            async with grpc.aio.insecure_channel(restarted.target) as channel:
                ledger = Ledger(channel)
                assert (await ledger.authorize(card, 100)).response_code == "00"
                for request in requests[:50]:
                    again = await ledger.auth.Authorize(request)
                    assert (again.response_code == "00") == (request.message_id in approved) or (
                        request.message_id not in approved
                    )
                await _cache_equals_postgres(stores, card)
        finally:
            restarted.kill()
    finally:
        server.kill()


async def _cache_equals_postgres(stores: Stores, card: IssuedCard) -> None:
    pool = await asyncpg.create_pool(stores.postgres_dsn, min_size=1, max_size=2)
    client = PipelinedRedis(address_from_url(stores.redis_url), timeout_s=5.0)
    try:
        from authswitch.adapters.redis.cache import LedgerCache
        from authswitch.service.clock import SystemClock

        cache = LedgerCache(client, stores.redis_prefix, marker_ttl_s=60)
        reconciler = Reconciler(ReconciliationStore(pool), cache, SystemClock())
        report = await reconciler._cache_differs(card.account_id)
        assert report is None, report
    finally:
        await client.aclose()
        await pool.close()


# -- Redis: FLUSHALL, SCRIPT FLUSH, a restart --------------------------------------------------


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path / "r")
    await asyncio.get_running_loop().run_in_executor(None, server.start)
    try:
        yield server
    finally:
        server.stop()


async def test_redis_flushed_and_restarted_under_load(
    stores: Stores, own_redis: EmbeddedRedis
) -> None:
    app = Application(
        settings_for(stores, redis_url=own_redis.url, redis_timeout_ms=500), keys=TEST_KEYS
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            ledger = Ledger(channel)
            card = await ledger.card(10_000)  # room for exactly 100 approvals of 1.00
            stop_chaos = asyncio.Event()
            chaos = asyncio.ensure_future(_redis_chaos(own_redis, stop_chaos))
            requests = [ledger.request(card, 100) for _ in range(400)]
            results: list[object] = []
            for start in range(0, len(requests), 40):
                wave = requests[start : start + 40]
                results += await asyncio.gather(
                    *(ledger.auth.Authorize(r, timeout=20) for r in wave), return_exceptions=True
                )
            # Stopped by an event, not by cancelling: redis-py can swallow a cancellation
            # that lands inside a command, and the chaos then ran on forever.
            stop_chaos.set()
            await asyncio.wait_for(chaos, 30)
            approved, codes = _outcomes(requests, results)
            assert set(codes) <= {"00", "51", "96"}, set(codes)
            assert all(isinstance(r, pb.AuthorizeResponse) for r in results)
            assert len(approved) <= 100, "overspent"
            await _durability(stores.postgres_dsn, card.account_id, approved)
            # Recovered: the cache is rebuilt and agrees with Postgres.
            await ledger.authorize(card, 1)
            store = ReconciliationStore(app.pool)  # type: ignore[arg-type]
            for _ in range(50):
                if (
                    await Reconciler(store, app.cache, app.clock)._cache_differs(card.account_id)
                    is None
                ):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the cache never agreed with Postgres again")
    finally:
        await app.stop()


async def _redis_chaos(server: EmbeddedRedis, stop: asyncio.Event) -> None:
    client = aioredis.Redis.from_url(server.url)
    rounds = 0
    restart: asyncio.Future[None] | None = None
    try:
        while not stop.is_set():
            await asyncio.sleep(random.uniform(0.005, 0.03))
            rounds += 1
            try:
                if rounds % 7 == 0:
                    await client.script_flush()
                elif rounds == 20:
                    await client.aclose()
                    # Awaited whole (shielded, and again below): the chaos never ends with
                    # Redis stopped.
                    restart = asyncio.ensure_future(_restart(server))
                    await asyncio.shield(restart)
                    client = aioredis.Redis.from_url(server.url)
                else:
                    await client.flushall()
            except (OSError, aioredis.ConnectionError):
                continue
    finally:
        if restart is not None:
            await restart
        await client.aclose()


async def _restart(server: EmbeddedRedis) -> None:
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, server.stop)
    await asyncio.sleep(0.2)
    await loop.run_in_executor(None, server.start)


# -- Postgres: dropped, stalled and refused connections ---------------------------------------


async def test_postgres_connections_cut_stalled_and_refused(stores: Stores) -> None:
    proxy = FaultProxy(target_of_dsn(stores.postgres_dsn))
    await proxy.start()
    app = Application(
        settings_for(
            stores,
            postgres_dsn=dsn_through(stores.postgres_dsn, proxy.port),
            redis_key_prefix=stores.redis_prefix + "p",
            postgres_statement_timeout_ms=1_500,
        ),
        keys=TEST_KEYS,
    )
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            ledger = Ledger(channel)
            card = await ledger.card(1_000_000)
            requests: list[pb.AuthorizeRequest] = []
            results: list[object] = []

            async def load(count: int) -> None:
                wave = [ledger.request(card, 100) for _ in range(count)]
                requests.extend(wave)
                results.extend(
                    await asyncio.gather(
                        *(ledger.auth.Authorize(r, timeout=30) for r in wave),
                        return_exceptions=True,
                    )
                )

            async def faults() -> None:
                await asyncio.sleep(0.05)
                await proxy.cut()  # every connection dropped mid-flight
                await asyncio.sleep(0.1)
                proxy.stall()  # traffic held...
                await asyncio.sleep(2.0)  # ...past the statement timeout
                proxy.resume()
                proxy.refuse = True  # a restart: nothing accepted for a while
                await proxy.cut()
                await asyncio.sleep(1.0)
                proxy.refuse = False

            await asyncio.gather(load(300), faults())
            approved, codes = _outcomes(requests, results)
            assert set(codes) <= {"00", "96"}, set(codes)
            assert all(isinstance(r, pb.AuthorizeResponse) for r in results)
            await _durability(stores.postgres_dsn, card.account_id, approved)
            # Recovery without restarting authswitch.
            for _ in range(100):
                if (await ledger.authorize(card, 100)).response_code == "00":
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("never recovered")
    finally:
        await app.stop()
        await proxy.stop()
