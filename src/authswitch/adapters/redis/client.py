"""Connecting to Redis: one server, a Redis Cluster, or a primary that Redis Sentinel
watches, named by ``AUTHSWITCH_REDIS_URL``.

URL forms::

    redis://[user:password@]host:port/db        one server (rediss:// with TLS)
    unix:///path/to/redis.sock                   one server on a Unix socket
    redis+cluster://[user:password@]host:port[,host:port...]
                                                 a Redis Cluster (rediss+cluster:// with TLS)
    redis+sentinel://[user:password@]host:port[,host:port...]/master-name[/db]
                  [?sentinel_username=...&sentinel_password=...]
                                                 the primary that these Sentinels call
                                                 master-name (rediss+sentinel:// with TLS)

The hosts of a cluster URL are seeds: any one that answers tells the client the whole
topology, so name several. A cluster has one database (no ``/db``, or ``/0``).

The hosts of a sentinel URL are the Sentinels (port 26379 by default), not the Redis
servers: the client asks them for the current primary of ``master-name`` and connects to
it; ``db`` defaults to 0. ``user:password@`` are the Redis servers' credentials; the
Sentinels themselves are reached without any, unless ``sentinel_username`` /
``sentinel_password`` are given (percent-encoded, like the password). Those are the only
options a sentinel URL takes.

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

Sentinel (redis-py's ``Sentinel.master_for``): every new connection asks a Sentinel for the
current primary; a connection to a primary that has died fails, and one to a primary that
was demoted to a replica fails on its first write (READONLY), so a failover surfaces as
errors — answered 96, never retried — until Sentinel has promoted a replica, and then the
next connection goes to it. Asynchronous replication can lose the last writes of the old
primary, so the same node fence as on a cluster applies (:func:`needs_node_fence`): every
account is reloaded from Postgres before its next decision on the promoted replica, whose
replication id is new. Connections are a blocking pool, as for one server.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias
from urllib.parse import parse_qs, unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, ClusterError, RedisError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from authswitch.adapters.redis.pipeline import (
    Address,
    Pipelined,
    PipelinedCluster,
    PipelinedRedis,
    address_from_url,
)
from authswitch.errors import ConfigError

__all__ = [
    "CLUSTER_SCHEMES",
    "SENTINEL_SCHEMES",
    "ClusterClient",
    "RedisClient",
    "RedisClients",
    "SentinelClient",
    "connect",
    "connect_clients",
    "is_cluster_url",
    "is_sentinel_url",
    "needs_node_fence",
    "open_client",
]

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SENTINEL_PORT_DEFAULT = 26379
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
CLUSTER_RETRIES_MAX = 3  # retries of a refused (never run) command on a fresh topology
CLUSTER_SEEDS_MAX = 64
# A call refused by every redirection redis-py follows (TRYAGAIN while its slot migrates) is
# tried again after this pause, until the timeout.
REFUSED_PAUSE_S = 0.02
HEALTH_CHECK_INTERVAL_S = 30


def is_cluster_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in CLUSTER_SCHEMES


def is_sentinel_url(url: str) -> bool:
    return url.split("://", 1)[0].lower() in SENTINEL_SCHEMES


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


class _Sentinels(Sentinel):
    """redis-py's ``Sentinel`` with discovery serialised. Its ``discover_master`` moves the
    Sentinel that answered to the front of its list by an index taken before an await, so
    concurrent discoveries (every new connection runs one, and a failover opens many at
    once) swap the wrong entries: one Sentinel ends up listed twice and another dropped —
    never asked again, and never closed. One discovery at a time keeps the list a
    permutation; it costs nothing while connections are reused."""

    def __init__(self, sentinels: list[tuple[str, int]], **kwargs: Any) -> None:
        # Untyped before redis 8.2.
        super().__init__(sentinels, **kwargs)  # type: ignore[no-untyped-call,unused-ignore]
        self._discovery = asyncio.Lock()

    async def discover_master(self, service_name: str) -> Any:
        async with self._discovery:
            return await super().discover_master(service_name)


class SentinelClient(aioredis.Redis):
    """A client of the primary that Sentinel names; closing it closes its Sentinel
    connections too."""

    sentinels: _Sentinels | None = None  # (``sentinel`` is a Redis command method)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinels is not None:
                await self.sentinels.aclose()


class _BlockingSentinelPool(SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Sentinel's pool (connections to the current primary) that waits for a free
    connection, up to its timeout, instead of failing when all are in use."""


RedisClient: TypeAlias = aioredis.Redis | ClusterClient


def needs_node_fence(client: RedisClient) -> bool:
    """Whether ``client`` can meet a promoted replica that missed writes (a cluster or a
    Sentinel failover): the cache then records and checks the node's replication id
    (``cache.py``, the node fence). One server needs no fence: a restarted one is empty."""
    return isinstance(client, ClusterClient | SentinelClient)


def _hosts(hosts: str, default_port: int) -> list[tuple[str, int]]:
    """``host[:port],...`` as (host, port) pairs; IPv6 addresses in brackets."""
    found: list[tuple[str, int]] = []
    for item in hosts.split(","):
        host, port = item, str(default_port)
        if item.startswith("["):  # [::1]:7000
            host, _, rest = item[1:].partition("]")
            port = rest.removeprefix(":") or port
        elif ":" in item:
            host, _, port = item.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"AUTHSWITCH_REDIS_URL: expected host:port, got {item!r}")
        found.append((host, int(port)))
    if len(found) > CLUSTER_SEEDS_MAX:
        raise ConfigError(f"AUTHSWITCH_REDIS_URL: at most {CLUSTER_SEEDS_MAX} hosts")
    return found


def _cluster_kwargs(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise ConfigError("AUTHSWITCH_REDIS_URL: a cluster URL takes no ?options")
    if parts.path not in ("", "/", "/0"):
        raise ConfigError("AUTHSWITCH_REDIS_URL: a Redis Cluster has only database 0")
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    seeds = _hosts(hosts, 6379)
    return {
        "startup_nodes": [ClusterNode(host, port) for host, port in seeds],
        "username": unquote(username) or None,
        "password": unquote(password) or None,
        "ssl": parts.scheme.lower() == "rediss+cluster",
    }


def _sentinel_client(url: str, *, pool_max: int, timeout_s: float) -> SentinelClient:
    parts = urlsplit(url)
    if parts.fragment:
        raise ConfigError("AUTHSWITCH_REDIS_URL: a sentinel URL takes no #fragment")
    try:
        options = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise ConfigError("AUTHSWITCH_REDIS_URL: malformed ?options") from None
    unknown = sorted(set(options) - set(SENTINEL_OPTIONS))
    if unknown or any(len(values) != 1 for values in options.values()):
        raise ConfigError(
            f"AUTHSWITCH_REDIS_URL: a sentinel URL takes only {', '.join(SENTINEL_OPTIONS)}"
            f" once each (got {', '.join(unknown) or 'a repeated option'})"
        )
    path = [unquote(p) for p in parts.path.split("/")[1:]]
    if path and path[-1] == "" and len(path) > 1:
        path.pop()  # a trailing slash
    if not 1 <= len(path) <= 2 or not path[0] or (len(path) == 2 and not path[1].isdigit()):
        raise ConfigError(
            "AUTHSWITCH_REDIS_URL: a sentinel URL ends in /master-name or /master-name/db"
        )
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    tls = parts.scheme.lower() == "rediss+sentinel"
    timeouts = {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    sentinel_kwargs: dict[str, Any] = {
        **timeouts,
        "username": unquote(options.get("sentinel_username", [""])[0]) or None,
        "password": unquote(options.get("sentinel_password", [""])[0]) or None,
    }
    if tls:
        sentinel_kwargs["ssl"] = True
    sentinel = _Sentinels(
        _hosts(hosts, SENTINEL_PORT_DEFAULT), sentinel_kwargs=sentinel_kwargs, **timeouts
    )
    client = sentinel.master_for(
        path[0],
        redis_class=SentinelClient,
        connection_pool_class=_BlockingSentinelPool,
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        ssl=tls,
        max_connections=pool_max,
        timeout=timeout_s,  # the wait for a free connection
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
    )
    assert isinstance(client, SentinelClient)
    client.sentinels = sentinel
    return client


def open_client(url: str, *, pool_max: int, timeout_s: float) -> RedisClient:
    """A client for ``url``, not yet connected. Raises ConfigError for a bad cluster or
    sentinel URL."""
    if is_sentinel_url(url):
        return _sentinel_client(url, pool_max=pool_max, timeout_s=timeout_s)
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
    """A client for ``url`` that has reached the server (a cluster: learnt its topology;
    Sentinel: found the primary)."""
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
    fenced: bool  # whether the cache checks the data set it runs on (needs_node_fence)

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
        elif isinstance(admin, SentinelClient):
            ledger = PipelinedRedis(_sentinel_primary(admin), timeout_s=timeout_s)
        else:
            ledger = PipelinedRedis(address_from_url(url), timeout_s=timeout_s)
        await ledger.connect()
    except BaseException:
        await admin.aclose()
        raise
    return RedisClients(admin, ledger, needs_node_fence(admin))


def _sentinel_primary(client: SentinelClient) -> Callable[[], Awaitable[Address]]:
    """Where the pipelined connection goes behind Sentinel: the primary the Sentinels name
    now, asked again on every new connection (after a lost one, or a READONLY reply from a
    demoted primary), with the data nodes' login of ``client``."""
    assert client.sentinels is not None
    sentinels = client.sentinels
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    login = pool.connection_kwargs
    tls = ssl.create_default_context() if login.get("ssl") else None
    service: str = pool.service_name

    async def primary() -> Address:
        host, port = await sentinels.discover_master(service)
        return Address(
            host=host,
            port=int(port),
            username=login.get("username"),
            password=login.get("password"),
            db=int(login.get("db") or 0),
            tls=tls,
        )

    return primary
