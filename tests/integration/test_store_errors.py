"""A store that cannot be used leaves its adapter as StoreUnavailable, its cause chained
(adapters/postgres/errors.py, adapters/redis/errors.py), on real servers reached through a
fault proxy that is then stopped; the gRPC boundary maps that error alone to UNAVAILABLE.
(The ``app`` fixture is asked for its migrated schema.)"""

from __future__ import annotations

import asyncpg
import grpc
import pytest
import redis.exceptions

from authswitch.adapters.grpc.errors import status_for
from authswitch.adapters.postgres.catalog import CatalogStore
from authswitch.adapters.postgres.controls import ControlStore
from authswitch.adapters.postgres.ledger import LedgerStore
from authswitch.adapters.postgres.pool import create_pool
from authswitch.adapters.redis.cache import LedgerCache
from authswitch.adapters.redis.pipeline import PipelinedRedis
from authswitch.app import Application
from authswitch.errors import NotFound, StoreUnavailable
from tests.support.proxy import (
    FaultProxy,
    dsn_through,
    redis_through,
    target_of_dsn,
    target_of_redis_url,
)
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(60)

_CARD_ID = "00000000-0000-0000-0000-000000000000"


async def test_a_closed_pool_is_unavailable_with_its_cause(
    stores: Stores, app: Application
) -> None:
    pool = await create_pool(
        stores.postgres_dsn, min_size=1, max_size=1, statement_timeout_ms=5_000
    )
    catalog, ledger = CatalogStore(pool), LedgerStore(pool)
    assert await ledger.card_state(_CARD_ID) is None  # the pool works
    await pool.close()
    # A method translated by the class (a frame a call) and one that translates in its own
    # body (on the decision path) fail alike.
    with pytest.raises(StoreUnavailable, match="Postgres unavailable") as by_class:
        await catalog.assets()
    with pytest.raises(StoreUnavailable, match="Postgres unavailable") as inline:
        await ledger.card_state(_CARD_ID)
    for caught in (by_class, inline):
        assert isinstance(caught.value.__cause__, asyncpg.InterfaceError)


async def test_a_stopped_postgres_is_unavailable_and_a_refusal_is_not(
    stores: Stores, app: Application
) -> None:
    proxy = FaultProxy(target_of_dsn(stores.postgres_dsn))
    await proxy.start()
    pool = await create_pool(
        dsn_through(stores.postgres_dsn, proxy.port),
        min_size=0, max_size=1, statement_timeout_ms=5_000,
    )  # fmt: skip
    try:
        controls = ControlStore(pool)
        assert await controls.versions(_CARD_ID) == []
        with pytest.raises(NotFound):  # the adapter's own refusal goes through as it is
            await controls.versions("not a card")
        await pool.expire_connections()
        await proxy.stop()  # nothing listens any more: connections are refused
        with pytest.raises(StoreUnavailable, match="Postgres unavailable") as caught:
            await controls.versions(_CARD_ID)
        assert isinstance(caught.value.__cause__, OSError)
    finally:
        await pool.close()


async def test_a_stopped_redis_is_unavailable_with_its_cause(stores: Stores) -> None:
    proxy = FaultProxy(target_of_redis_url(stores.redis_url))
    await proxy.start()
    client = PipelinedRedis(redis_through(stores.redis_url, proxy.port), timeout_s=5)
    cache = LedgerCache(client, stores.redis_prefix + "errors:", marker_ttl_s=60)
    try:
        assert await cache.read_balances("no-such-account") is None  # a script: it works
        await proxy.stop()
        # A script (settled in a callback) and a plain command (awaited) fail alike.
        with pytest.raises(StoreUnavailable, match="Redis unavailable") as script:
            await cache.read_balances("no-such-account")
        with pytest.raises(StoreUnavailable, match="Redis unavailable") as command:
            await cache.invalidate("x")
        for caught in (script, command):
            assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
    finally:
        await client.aclose()
        await proxy.stop()


def test_the_boundary_maps_the_translation_to_unavailable() -> None:
    translated = StoreUnavailable("Postgres unavailable: ConnectionResetError")
    translated.__cause__ = ConnectionResetError()
    assert status_for(translated) == (
        grpc.StatusCode.UNAVAILABLE,
        "a store is unavailable, retry later",
    )
    assert status_for(NotFound("card x does not exist"))[0] is grpc.StatusCode.NOT_FOUND
