"""The pipelined Redis client (adapters/redis/pipeline.py) on a real Redis, through a fault
proxy: every reply answers its own command, and a connection that breaks or goes silent fails
only the commands on it. (MOVED and ASK are followed in tests/e2e/test_redis_cluster.py, on
a real cluster whose slots migrate and whose primary fails over.)"""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from authswitch.adapters.redis.pipeline import PipelinedRedis, address_from_url
from authswitch.futures import Detached
from tests.support.proxy import FaultProxy, redis_through, target_of_redis_url
from tests.support.stores import Stores

pytestmark = pytest.mark.timeout(60)


async def _through_proxy(stores: Stores, timeout_s: float) -> tuple[FaultProxy, PipelinedRedis]:
    proxy = FaultProxy(target_of_redis_url(stores.redis_url))
    await proxy.start()
    return proxy, PipelinedRedis(redis_through(stores.redis_url, proxy.port), timeout_s=timeout_s)


async def test_every_reply_answers_its_own_command(stores: Stores) -> None:
    client = PipelinedRedis(address_from_url(stores.redis_url), timeout_s=5)
    try:
        payloads = [f"p{i}-" + "x" * (i % 50) for i in range(2_000)]
        futures = [client.call("ECHO", p) for p in payloads]  # all in flight at once
        assert all(isinstance(f, Detached) for f in futures)
        replies = await asyncio.gather(*futures)
        assert replies == [p.encode() for p in payloads]
        # An error reply fails its own command only.
        mixed = [client.call("ECHO", "a"), client.call("NOSUCHCOMMAND"), client.call("ECHO", "b")]
        results = await asyncio.gather(*mixed, return_exceptions=True)
        assert results[0] == b"a"
        assert isinstance(results[1], ResponseError)
        assert results[2] == b"b"
    finally:
        await client.aclose()


async def test_a_connection_cut_mid_pipeline_fails_only_its_commands(stores: Stores) -> None:
    proxy, client = await _through_proxy(stores, timeout_s=5)
    try:
        assert await client.execute("PING") == b"PONG"  # connected
        # The next connection... this one is cut once 20 kB more have gone to Redis.
        proxy.cut_after(20_000)
        await proxy.cut()
        payloads = [f"c{i}-" + "y" * 100 for i in range(1_000)]  # ~120 kB of commands
        results = await asyncio.gather(
            *(client.call("ECHO", p) for p in payloads), return_exceptions=True
        )
        answered = [(p, r) for p, r in zip(payloads, results, strict=True) if isinstance(r, bytes)]
        failed = [r for r in results if not isinstance(r, bytes)]
        assert failed, "the cut failed nothing"
        assert all(isinstance(r, RedisConnectionError) for r in failed), failed[:3]
        assert all(r == p.encode() for p, r in answered), "a reply answered another command"
        # The next commands go over a new connection, paired as ever.
        again = [f"after-{i}" for i in range(500)]
        assert await asyncio.gather(*(client.call("ECHO", p) for p in again)) == [
            p.encode() for p in again
        ]
    finally:
        await client.aclose()
        await proxy.stop()


async def test_a_silent_connection_fails_its_commands_and_its_late_replies_go_nowhere(
    stores: Stores,
) -> None:
    proxy, client = await _through_proxy(stores, timeout_s=0.5)
    try:
        assert await client.execute("PING") == b"PONG"
        proxy.stall()
        stuck = [client.call("ECHO", f"stuck-{i}") for i in range(50)]
        results = await asyncio.gather(*stuck, return_exceptions=True)
        assert all(isinstance(r, RedisTimeoutError) for r in results), results[:3]
        proxy.resume()  # the stuck replies may now arrive, on the abandoned connection
        fresh = [f"fresh-{i}" for i in range(200)]
        assert await asyncio.gather(*(client.call("ECHO", p) for p in fresh)) == [
            p.encode() for p in fresh
        ]
    finally:
        await client.aclose()
        await proxy.stop()


async def test_a_cancelled_caller_does_not_abandon_a_sent_command(stores: Stores) -> None:
    """Cancelling the task awaiting a command waits for its reply, which stays readable."""
    client = PipelinedRedis(address_from_url(stores.redis_url), timeout_s=5)
    key = f"{stores.redis_prefix}:pipeline:counter"
    try:
        future = client.call("INCR", key)

        async def wait() -> int:
            return int(await future)

        waiter = asyncio.ensure_future(wait())
        await asyncio.sleep(0)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert future.done()
        assert not future.cancelled()
        assert future.result() == int(await client.execute("GET", key))
    finally:
        await client.execute("DEL", key)
        await client.aclose()
