"""Connecting to Redis: one server, or a Redis Cluster, named by ``AUTHSWITCH_REDIS_URL``.

URL forms::

    redis://[user:password@]host:port/db        one server (rediss:// with TLS)
    unix:///path/to/redis.sock                   one server on a Unix socket
    redis+cluster://[user:password@]host:port[,host:port...]
                                                 a Redis Cluster (rediss+cluster:// with TLS)

The hosts of a cluster URL are seeds: any one that answers tells the client the whole
topology, so name several. A cluster has one database (no ``/db``, or ``/0``).

One server: a blocking pool, so a burst beyond ``pool_max`` connections waits (up to the
timeout) instead of failing.

A cluster (redis-py's ``RedisCluster``): MOVED and ASK redirections and TRYAGAIN are followed
inside a call (the command did not run where it was refused). A call is retried on a fresh
topology after errors that prove the command did not run (CLUSTERDOWN, an uncovered slot).
A timeout or a broken connection may come after the command ran, so it surfaces as an error,
exactly as with one server (the caller answers 96 and reloads the account from Postgres) —
with one exception: a script whose slot, on the fresh topology, belongs to another node (its
primary died and a replica took over) runs once more there. That is safe because every
script refuses state written on another data set (``cache.py``: the node fence): whatever the
first attempt did stays on the old node or reads as not loaded. So the first decision after a
failover is answered, not 96.

Commands in flight per process are limited to ``pool_max`` (waiting up to the timeout), and
each node gets at most that many connections, so a burst never meets redis-py's "too many
connections" error.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, ClusterError, RedisError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from authswitch.adapters.redis.pipeline import (
    Pipelined,
    PipelinedCluster,
    PipelinedRedis,
    address_from_url,
)
from authswitch.errors import ConfigError

__all__ = [
    "CLUSTER_SCHEMES",
    "ClusterClient",
    "RedisClient",
    "RedisClients",
    "connect",
    "connect_clients",
    "is_cluster_url",
    "open_client",
]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
CLUSTER_RETRIES_MAX = 3  # retries of a refused (never run) command on a fresh topology
CLUSTER_SEEDS_MAX = 64
# A call refused by every redirection redis-py follows (TRYAGAIN while its slot migrates) is
# tried again after this pause, until the timeout.
REFUSED_PAUSE_S = 0.02
HEALTH_CHECK_INTERVAL_S = 30


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


class ClusterClient(RedisCluster):
    """``RedisCluster`` that retries only commands that certainly did not run (or scripts
    whose slot moved to another node), and holds at most ``commands_max`` in flight."""

    # redis-py also retries ConnectionError and TimeoutError, which may come after the
    # command ran: a script re-run could apply a balance change twice.
    ERRORS_ALLOW_RETRY = (ClusterDownError, SlotNotCoveredError)  # type: ignore[assignment]

    def __init__(self, *, commands_max: int, wait_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        assert commands_max > 0
        assert wait_s > 0
        self._commands = asyncio.Semaphore(commands_max)
        self._wait_s = wait_s

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            async with asyncio.timeout(self._wait_s):
                await self._commands.acquire()
        except TimeoutError:
            raise RedisConnectionError("No connection available.") from None
        deadline = asyncio.get_running_loop().time() + self._wait_s
        try:
            try:
                return await self._refused_until(deadline, args, kwargs)
            except (RedisConnectionError, RedisTimeoutError) as exc:
                if not await self._script_moved_away(args, exc):
                    raise
            return await self._refused_until(deadline, args, kwargs)
        finally:
            self._commands.release()

    async def _refused_until(
        self, deadline: float, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """While a slot migrates, a script that creates a key there (a new idempotency
        marker) is answered TRYAGAIN until the slot is closed; redis-py gives up after about
        0.4 s ("TTL exhausted": the command never ran). Wait up to the timeout instead."""
        while True:
            try:
                return await super().execute_command(*args, **kwargs)
            except ClusterError as exc:
                if type(exc) is not ClusterError or asyncio.get_running_loop().time() > deadline:
                    raise
            await asyncio.sleep(REFUSED_PAUSE_S)

    async def _script_moved_away(self, args: tuple[Any, ...], exc: RedisError) -> bool:
        """Whether ``args`` is a script whose keys, on a fresh topology, live on another
        node than the one that failed under it."""
        failed = getattr(exc, "last_failed_node_name", None)  # set by RedisCluster
        script = len(args) >= 4 and str(args[0]).upper() in ("EVAL", "EVALSHA")
        if failed is None or not script or int(args[2]) < 1:
            return False
        try:
            await self.initialize(last_failed_node_name=failed)  # redis-py asked for a refresh
            node = self.get_node_from_key(args[3])
        except RedisError:
            return False
        return node is not None and node.name != failed


RedisClient: TypeAlias = aioredis.Redis | ClusterClient


def _cluster_kwargs(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigError("AUTHSWITCH_REDIS_URL: a cluster URL takes no ?options")
    if parts.path not in ("", "/", "/0"):
        raise ConfigError("AUTHSWITCH_REDIS_URL: a Redis Cluster has only database 0")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    seeds: list[tuple[str, int]] = []
    for seed in hosts.split(","):
        host, port = seed, "6379"
        if seed.startswith("["):  # [::1]:7000
            host, _, rest = seed[1:].partition("]")
            port = rest.removeprefix(":") or port
        elif ":" in seed:
            host, _, port = seed.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"AUTHSWITCH_REDIS_URL: expected host:port, got {seed!r}")
        seeds.append((host, int(port)))
    if len(seeds) > CLUSTER_SEEDS_MAX:
        raise ConfigError(f"AUTHSWITCH_REDIS_URL: at most {CLUSTER_SEEDS_MAX} seed nodes")
    return {
        "startup_nodes": [ClusterNode(host, port) for host, port in seeds],
        "username": unquote(username) or None,
        "password": unquote(password) or None,
        "ssl": parts.scheme.lower() == "rediss+cluster",
    }


def open_client(url: str, *, pool_max: int, timeout_s: float) -> RedisClient:
    """A client for ``url``, not yet connected. Raises ConfigError for a bad cluster URL."""
    if not is_cluster_url(url):
        # A burst beyond the pool waits for a free connection (up to the Redis timeout)
        # rather than failing at once: redis-py's default pool raises when it is exhausted.
        return aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(
                url,
                max_connections=pool_max,
                timeout=timeout_s,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                health_check_interval=HEALTH_CHECK_INTERVAL_S,
            )
        )
    return ClusterClient(
        commands_max=pool_max,
        wait_s=timeout_s,
        max_connections=pool_max,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
        retry=Retry(NoBackoff(), CLUSTER_RETRIES_MAX),
        # A MOVED patches the slot's entry; redis-py's default also rebuilds the topology
        # every 5th MOVED by closing every connection, failing the other calls in flight.
        reinitialize_steps=0,
        **_cluster_kwargs(url),
    )


async def connect(url: str, *, pool_max: int, timeout_s: float) -> RedisClient:
    """A client for ``url`` that has reached the server (a cluster: learnt its topology)."""
    client = open_client(url, pool_max=pool_max, timeout_s=timeout_s)
    try:
        if isinstance(client, ClusterClient):
            await client.initialize()
        else:
            await client.ping()
    except BaseException:
        await client.aclose()
        raise
    return client


@dataclass(frozen=True, slots=True)
class RedisClients:
    """Both clients of one Redis deployment: redis-py's (administration, and a cluster's
    topology), and the pipelined one the ledger's scripts run on (``pipeline.py``)."""

    admin: RedisClient
    ledger: Pipelined

    async def aclose(self) -> None:
        try:
            await self.ledger.aclose()
        finally:
            await self.admin.aclose()


async def connect_clients(url: str, *, pool_max: int, timeout_s: float) -> RedisClients:
    """Both clients for ``url``, connected (a cluster: its topology learnt)."""
    admin = await connect(url, pool_max=pool_max, timeout_s=timeout_s)
    ledger: PipelinedRedis | PipelinedCluster
    try:
        if isinstance(admin, ClusterClient):
            login = _cluster_kwargs(url)
            ledger = PipelinedCluster(
                admin,
                timeout_s=timeout_s,
                username=login["username"],
                password=login["password"],
                tls=ssl.create_default_context() if login["ssl"] else None,
            )
        else:
            ledger = PipelinedRedis(address_from_url(url), timeout_s=timeout_s)
        await ledger.connect()
    except BaseException:
        await admin.aclose()
        raise
    return RedisClients(admin, ledger)
