"""authswitch on Redis with Sentinel (``redis+sentinel://``): a primary, its replica and three
Sentinels started by tests/support/redis_sentinel.py. The primary dies under load after a
reservation its replica never received; the Sentinels promote the replica. Never an
overspend, every request answered, and every account rebuilt from Postgres before it decides
on the promoted replica (the node fence, as on a cluster: docs/scaling.md)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import grpc
import pytest
from prometheus_client import REGISTRY

from authswitch.adapters.postgres.reconcile import ReconciliationStore
from authswitch.adapters.redis.client import (
    SentinelClient,
    connect,
    needs_node_fence,
    open_client,
)
from authswitch.app import Application
from authswitch.errors import ConfigError
from authswitch.service.reconcile import Reconciler
from tests.conftest import TEST_KEYS, settings_for
from tests.e2e.test_faults import _durability
from tests.support.ledger import IssuedCard, Ledger
from tests.support.load import SteadyLoad
from tests.support.redis_sentinel import Process, SentinelGroup, sentinel_group
from tests.support.stores import Stores

# -- the URL -------------------------------------------------------------------------------------


async def test_sentinel_urls_name_sentinels_master_database_and_credentials() -> None:
    client = open_client(
        "rediss+sentinel://ops:p%40ss@[::1]:5000,s-1,10.0.0.3:26380/cache%2Dmain/3"
        "?sentinel_password=s%21cret",
        pool_max=4,
        timeout_s=1,
    )
    try:
        assert isinstance(client, SentinelClient)
        assert needs_node_fence(client)
        assert client.sentinels is not None
        sentinels = [
            (
                s.connection_pool.connection_kwargs["host"],
                s.connection_pool.connection_kwargs["port"],
            )
            for s in client.sentinels.sentinels
        ]
        assert sentinels == [("::1", 5000), ("s-1", 26379), ("10.0.0.3", 26380)]
        sentinel_kwargs = client.sentinels.sentinels[0].connection_pool.connection_kwargs
        assert sentinel_kwargs["password"] == "s!cret"
        pool = client.connection_pool
        assert pool.service_name == "cache-main"  # type: ignore[attr-defined]
        assert pool.connection_kwargs["db"] == 3
        assert pool.connection_kwargs["username"] == "ops"
        assert pool.connection_kwargs["password"] == "p@ss"
        assert "SSL" in pool.connection_class.__name__
        assert pool.max_connections == 4
    finally:
        await client.aclose()
    plain = open_client("redis+sentinel://127.0.0.1/main", pool_max=4, timeout_s=1)
    assert isinstance(plain, SentinelClient)
    assert plain.connection_pool.connection_kwargs["db"] == 0
    assert plain.connection_pool.connection_kwargs["password"] is None
    await plain.aclose()
    single = open_client("redis://127.0.0.1:6379/2", pool_max=4, timeout_s=1)
    assert not needs_node_fence(single)
    await single.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "redis+sentinel://a:26379",  # no master name
        "redis+sentinel://a:26379/",
        "redis+sentinel://a:26379/main/x",  # a database is a number
        "redis+sentinel://a:26379/main/1/2",
        "redis+sentinel://a:26379/main?ssl_cert_reqs=none",  # not an option we take
        "redis+sentinel://a:26379/main?sentinel_password=a&sentinel_password=b",
        "redis+sentinel://a:x/main",
        "redis+sentinel://a:1,,b:2/main",
        "redis+sentinel://a:70000/main",
    ],
)
def test_malformed_sentinel_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        open_client(url, pool_max=4, timeout_s=1)


# -- a failover under load ---------------------------------------------------------------------


@pytest.fixture
async def group() -> AsyncIterator[SentinelGroup]:
    async with sentinel_group() as started:
        yield started


@contextlib.asynccontextmanager
async def sentinel_app(stores: Stores, group: SentinelGroup) -> AsyncIterator[
    tuple[Application, Ledger]
]:  # fmt: skip
    app = Application(
        settings_for(
            stores,
            redis_url=group.url(),
            redis_key_prefix=stores.redis_prefix + "sn",
            redis_timeout_ms=1000,
        ),
        keys=TEST_KEYS,
    )
    await app.start()
    try:
        assert isinstance(app.redis, SentinelClient)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            yield app, Ledger(channel)
    finally:
        await app.stop()


def _loads(cause: str) -> float:
    return REGISTRY.get_sample_value("authswitch_cache_loads_total", {"cause": cause}) or 0.0


async def _replid(node: Process) -> str:
    return (await node.info("replication"))["master_replid"]


async def _program_of(app: Application, card: IssuedCard) -> str:
    assert app.pool is not None
    return str(
        await app.pool.fetchval(
            "SELECT program_id::text FROM accounts WHERE id = $1", card.account_id
        )
    )


async def test_a_burst_beyond_the_pool_waits_for_a_connection(group: SentinelGroup) -> None:
    client = await connect(group.url(), pool_max=2, timeout_s=5)
    try:
        await asyncio.gather(*(client.incr("burst") for _ in range(50)))
        assert int(await client.get("burst") or 0) == 50
        assert await group.primary.cmd("GET", "burst") == b"50"  # the primary, found
    finally:
        await client.aclose()


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_primary_killed_under_load_no_overspend_and_reload_before_deciding(
    stores: Stores, group: SentinelGroup
) -> None:
    async with sentinel_app(stores, group) as (app, ledger):
        primary, replica = group.primary, group.replica
        hot = await ledger.card(1_000)
        busy = await ledger.card(20_000)  # room for exactly 200 approvals of 1.00
        ample = await ledger.card(100_000_000)
        state = app.cache.keys.state(hot.account_id)
        assert (await ledger.authorize(hot, 100)).response_code == "00"
        # The fence is on: the state records the data set it was loaded into.
        assert (await primary.cmd("HGET", state, "r")).decode() == await _replid(primary)
        assert await primary.cmd("WAIT", 1, 2000) == 1  # the replica has everything so far

        load = SteadyLoad(ledger, [busy, ample], workers=6, pause_s=0.01)
        load.start()
        try:
            await asyncio.sleep(0.5)
            # Cut replication for good: the replica is dropped and may not sync again.
            await primary.cmd("ACL", "SETUSER", "default", "-psync", "-sync")
            await primary.cmd("CLIENT", "KILL", "TYPE", "replica")
            for _ in range(500):
                if (await replica.info("replication")).get("master_link_status") == "down":
                    break
                await asyncio.sleep(0.01)
            else:
                raise AssertionError("the replica still follows its primary")

            # Approved, durable in Postgres, held on the primary — and never replicated.
            lost = await ledger.authorize(hot, 500)
            assert lost.response_code == "00"
            assert await ledger.figures(hot.account_id) == (1_000, 400, 600)
            assert await primary.cmd("HGET", state, "h:GBP") == b"600"
            assert await replica.cmd("HGET", state, "h:GBP") == b"100", "the write was not lost"
            old_replid = await _replid(primary)

            # The primary dies under load; the Sentinels promote its replica.
            primary.kill()
            await group.wait_promoted(replica)
            assert await _replid(replica) != old_replid
            await load.wait_for_approval_after(time.monotonic())
            await asyncio.sleep(0.5)  # load on the new primary
        finally:
            await load.stop()

        # On the promoted replica the hot account's state still lacks the 5.00 hold, and
        # was written on the old primary's data set.
        assert await replica.cmd("HGET", state, "h:GBP") == b"100"
        assert (await replica.cmd("HGET", state, "r")).decode() == old_replid
        misses, refused = _loads("miss"), _loads("refused")

        # Its first decision finds state of another data set, and the account is rebuilt
        # from Postgres before deciding. From the stale cache it would have approved 4.50 in
        # full and Postgres refused it (51).
        probe = await ledger.authorize(hot, 450, partial=True)
        assert probe.response_code == "10", probe
        assert probe.approved_amount.amount_minor == 400
        assert _loads("miss") > misses
        assert _loads("refused") == refused, "a stale cache decided and Postgres refused it"
        assert await replica.cmd("HGET", state, "h:GBP") == b"1000"
        assert (await replica.cmd("HGET", state, "r")).decode() == await _replid(replica)

        # The load: every request answered, never an overspend, every approval durable.
        codes = load.codes()
        assert set(codes) <= {"00", "51", "96"}, codes
        assert "96" in codes, "the primary answered while it was dead?"
        for card in (busy, ample):
            approved = {
                o.request.message_id
                for o in load.outcomes
                if o.approved and o.account_id == card.account_id
            }
            await _durability(stores.postgres_dsn, card.account_id, approved)
            actual, _, held = await ledger.figures(card.account_id)
            assert held == 100 * len(approved)
            assert held <= actual, "overspent"
        print(f"sentinel failover under load: answers {codes}")

        store = ReconciliationStore(app.pool)  # type: ignore[arg-type]
        for card in (hot, busy, ample):
            report = await Reconciler(store, app.cache, app.clock).run(
                program_id=await _program_of(app, card)
            )
            assert report.ok, report.to_text()
        # Every Sentinel is still asked, each once: concurrent discoveries during the
        # failover did not duplicate one and drop another (client.py, _Sentinels).
        assert isinstance(app.redis, SentinelClient)
        assert app.redis.sentinels is not None
        asked = [s.connection_pool.connection_kwargs["port"] for s in app.redis.sentinels.sentinels]
        assert sorted(asked) == sorted(s.port for s in group.sentinels)
