"""A reload of an account's cached state in one process never loses a reservation another
process is still committing (service/cache_sync.py, adapters/redis/lua/begin_load.lua): two
applications on the same Postgres and Redis, as two worker processes (or two replicas) are.

The other process's commit is held back by a lock on the account's balance row, taken by
the test, so the reservation is in Redis and not yet in Postgres for as long as the test
wants; meanwhile the first process reloads the account.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import grpc
import pytest

from authswitch import metrics
from authswitch.app import Application
from authswitch.domain.ledger import Balance
from authswitch.errors import StoreUnavailable
from authswitch.service.cache_sync import HEARTBEAT_TTL_MS, CacheSync
from tests.conftest import TEST_KEYS, settings_for
from tests.support.ledger import IssuedCard, Ledger
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(90)

# How long the test leaves the reload to run while the other process's commit is held back:
# long enough for a reload that does not wait to finish (it takes milliseconds).
RELOAD_CHANCE_S = 1.0


@pytest.fixture(scope="module")
async def other(stores: Stores) -> AsyncIterator[Ledger]:
    """A second process's server."""
    app = Application(settings_for(stores), keys=TEST_KEYS)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
            yield Ledger(channel)
    finally:
        await app.stop()


async def _cached_and_durable(app: Application, account_id: str) -> tuple[Balance, Balance]:
    cached = await app.cache.read_balances(account_id)
    assert cached is not None, "the account is not cached"
    durable, _, _ = await app.sync.ledger.account_state(account_id, app.clock.now())
    return cached["GBP"], durable["GBP"]


async def _holding_the_balance_row(stores: Stores, card: IssuedCard) -> asyncpg.Connection:
    """A connection whose open transaction locks the account's balance row: a commit that
    changes the balance waits for it."""
    locker = await asyncpg.connect(stores.postgres_dsn)
    await locker.execute("BEGIN")
    await locker.execute("SELECT 1 FROM balances WHERE account_id = $1 FOR UPDATE", card.account_id)
    return locker


async def test_a_reload_waits_for_a_reservation_another_process_is_committing(
    app: Application, ledger: Ledger, other: Ledger, stores: Stores
) -> None:
    card = await ledger.card(100_000)
    assert (await other.authorize(card, 1_000)).response_code == "00"  # cached by both
    expired = _expired()
    locker = await _holding_the_balance_row(stores, card)
    try:
        committing = asyncio.ensure_future(other.authorize(card, 2_500))
        await _until(_held(app, card, 3_500))  # the other process's Redis step is made
        reload = asyncio.ensure_future(app.sync.refresh(card.account_id, "test"))
        await asyncio.wait([reload], timeout=RELOAD_CHANCE_S)
        # The reservation's write cannot be durable while the row is locked, so the
        # reload is still waiting for it.
        assert not reload.done()
    finally:
        await locker.execute("ROLLBACK")
        await locker.close()
    assert (await committing).response_code == "00"
    await reload
    cached, durable = await _cached_and_durable(app, card.account_id)
    assert durable == Balance(100_000, 3_500)
    assert cached == durable
    # The reload went ahead because the mark was released, not dropped as a dead one's.
    assert _expired() == expired
    assert await _marks(app, card.account_id) == 0


async def test_a_reload_makes_new_operations_wait_and_then_decide_on_fresh_state(
    app: Application, ledger: Ledger, other: Ledger, stores: Stores
) -> None:
    card = await ledger.card(10_000)
    assert (await other.authorize(card, 1_000)).response_code == "00"
    locker = await _holding_the_balance_row(stores, card)
    try:
        committing = asyncio.ensure_future(other.authorize(card, 4_000))
        await _until(_held(app, card, 5_000))
        reload = asyncio.ensure_future(app.sync.refresh(card.account_id, "test"))
        await _until(lambda: _barrier_set(app, card.account_id))
        # A new authorisation, in either process, waits for the reload rather than decide
        # on the state being replaced.
        waiting = asyncio.ensure_future(ledger.authorize(card, 5_500))
        await asyncio.wait([waiting], timeout=RELOAD_CHANCE_S)
        assert not waiting.done()
    finally:
        await locker.execute("ROLLBACK")
        await locker.close()
    assert (await committing).response_code == "00"
    await reload
    # 1,000 + 4,000 held of 10,000: 5,500 more does not fit, whichever process decides.
    assert (await waiting).response_code == "51"
    cached, durable = await _cached_and_durable(app, card.account_id)
    assert durable == Balance(10_000, 5_000)
    assert cached == durable


async def _barrier_set(app: Application, account_id: str) -> bool:
    key = app.cache.keys.state(account_id)
    return bool(await app.cache.client.keyed(key, "HEXISTS", key, "L"))


@pytest.mark.parametrize(
    ("owner", "age_s"),
    [("dead", 0), ("alive", 3600)],
    ids=["its process died (no heartbeat)", "older than any write (its release was lost)"],
)
async def test_a_mark_that_can_no_longer_be_live_is_dropped(
    app: Application, ledger: Ledger, owner: str, age_s: int
) -> None:
    card = await ledger.card(10_000)
    assert (await ledger.authorize(card, 1_000)).response_code == "00"
    key = app.cache.keys.marks(card.account_id)
    process = app.sync.process if owner == "alive" else "dead"
    (now_s, _) = await app.cache.client.keyed(key, "TIME")
    await app.cache.client.keyed(key, "ZADD", key, int(now_s) - age_s, f"{process}:1")
    expired = _expired()
    await app.sync.refresh(card.account_id, "test")
    assert _expired() == expired + 1
    assert await _marks(app, card.account_id) == 0
    cached, durable = await _cached_and_durable(app, card.account_id)
    assert cached == durable == Balance(10_000, 1_000)
    assert (await ledger.authorize(card, 9_000)).response_code == "00"


async def test_a_reload_fails_rather_than_pass_a_write_still_in_flight(
    app: Application, ledger: Ledger
) -> None:
    card = await ledger.card(10_000)
    assert (await ledger.authorize(card, 1_000)).response_code == "00"
    key = app.cache.keys.marks(card.account_id)
    (now_s, _) = await app.cache.client.keyed(key, "TIME")
    slow = f"{app.sync.process}:slow"  # a write in flight in a live process
    await app.cache.client.keyed(key, "ZADD", key, int(now_s), slow)
    sync = CacheSync(app.cache, app.sync.ledger, app.clock, drain_timeout_s=0.3)
    with pytest.raises(StoreUnavailable):
        await sync.refresh(card.account_id, "test")
    # Its barrier is dropped, and the state it was to replace is not used again: the next
    # decision reloads it, and waits for the write in flight to do so.
    assert not await _barrier_set(app, card.account_id)
    assert await app.cache.read_balances(card.account_id) is None
    deciding = asyncio.ensure_future(ledger.authorize(card, 1_000))
    await asyncio.wait([deciding], timeout=RELOAD_CHANCE_S)
    assert not deciding.done()
    await app.cache.client.keyed(key, "ZREM", key, slow)  # the write finishes
    assert (await deciding).response_code == "00"
    cached, durable = await _cached_and_durable(app, card.account_id)
    assert cached == durable == Balance(10_000, 2_000)


async def test_a_barrier_left_by_a_dead_reloader_is_taken_over_once_stale(
    app: Application, ledger: Ledger
) -> None:
    card = await ledger.card(10_000)
    assert (await ledger.authorize(card, 1_000)).response_code == "00"
    key = app.cache.keys.state(card.account_id)
    await app.cache.client.keyed(key, "HSET", key, "L", "dead", "Lt", 1)  # set long ago
    await app.sync.refresh(card.account_id, "test")
    assert not await _barrier_set(app, card.account_id)
    assert (await ledger.authorize(card, 9_000)).response_code == "00"


def _expired() -> float:
    return float(metrics.CACHE_MARKS_EXPIRED._value.get())


def _held(app: Application, card: IssuedCard, minor: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        cached, _ = await _cached_and_durable(app, card.account_id)
        return cached.authorized_minor >= minor

    return check


async def _until(check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + 20
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("never happened")
        await asyncio.sleep(0.01)


async def _marks(app: Application, account_id: str) -> int:
    key = app.cache.keys.marks(account_id)
    return int(await app.cache.client.keyed(key, "ZCARD", key))


async def test_a_process_started_earlier_adopts_the_newest_generation(stores: Stores) -> None:
    """Each process raises the cache's shared generation as it starts (workers start
    together). One that started earlier adopts the newest within a heartbeat, so what it
    loads is stamped with the generation reconciliation compares and the other processes
    do not take it for stale; without that it kept its own until its next miss."""
    prefix = f"{stores.redis_prefix}-gen{time.monotonic_ns()}"
    first = Application(settings_for(stores, redis_key_prefix=prefix), keys=TEST_KEYS)
    await first.start()
    try:
        second = Application(settings_for(stores, redis_key_prefix=prefix), keys=TEST_KEYS)
        await second.start()
        try:
            assert first.cache.generation < second.cache.generation
            await asyncio.sleep(HEARTBEAT_TTL_MS / 3000 + 0.5)
            assert first.cache.generation == second.cache.generation
        finally:
            await second.stop()
    finally:
        await first.stop()
