"""Redis on pipelined connections: the client of the decision path.

A decision is one Lua call. Through a connection pool each call would check a connection
out, write, wait for its reply, and check it back in: one connection per call in flight, and
the pool's bookkeeping, timeouts and health checks on every call. Here each Redis node has
ONE connection and every call in flight shares it: commands are written in order (the writes
of one event-loop turn go out in one ``write``), replies come back in the same order, and
hiredis parses them. The n-th reply answers the n-th command; nothing else is ever paired.

Failure rules, which keep that pairing exact:

* A connection that breaks (closed, reset, a protocol error) fails every command still
  waiting on it, with ``ConnectionError``: each of them may or may not have run, exactly as
  with a broken pooled connection (the caller answers 96 and reloads the account from
  Postgres). The next command opens a new connection.
* A connection whose oldest command has had no reply for ``timeout_s`` is broken the same way
  (``TimeoutError``): replies are ordered, so every later command is stuck behind it, and a
  late reply must never be read as the answer to a later command.
* Every future returned is :class:`~authswitch.futures.Detached`: a cancelled caller never
  abandons a command that was sent; it learns of its cancellation once the reply is in.
* At most ``pending_max`` commands wait on one connection; beyond that a call fails at once
  (``ConnectionError``), nothing sent.

A Redis Cluster (:class:`PipelinedCluster`) has one such connection per primary. The slot of
each call's key picks the node, from the topology redis-py's ``RedisCluster`` keeps (it also
serves the rest of the process). MOVED is followed to the node named (and the topology
refreshed), ASK by ``ASKING`` and the command in one write to the node named, TRYAGAIN (a slot
migrating) retried after a pause until the timeout, CLUSTERDOWN and an uncovered slot retried
on a fresh topology (the command did not run). A broken connection is reported like on one
server, except for a script whose slot, on a fresh topology, belongs to another node (its
primary failed over): it runs once more there, which is safe because every script refuses
state written on another data set (``cache.py``: the node fence).

Error replies arrive as redis-py's exception classes (``NoScriptError``, ``ResponseError``…),
so callers handle Redis errors one way whichever client raised them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    NoScriptError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from authswitch.errors import ConfigError
from authswitch.futures import Detached

__all__ = [
    "Address",
    "Pipelined",
    "PipelinedCluster",
    "PipelinedRedis",
    "address_from_url",
]

log = logging.getLogger(__name__)

PENDING_MAX_DEFAULT = 20_000  # commands waiting on one connection at most
CLUSTER_RETRIES_MAX = 3  # retries of a refused (never run) command on a fresh topology
REFUSED_PAUSE_S = 0.02  # between tries of a command refused while its slot migrates
TOPOLOGY_REFRESH_MIN_S = 0.25  # a node's troubles refresh the topology at most this often

Reply: TypeAlias = Any  # bytes, int, a list of replies, or None


@dataclass(frozen=True, slots=True)
class Address:
    """Where a Redis server listens and how to log in to it."""

    host: str = ""
    port: int = 6379
    path: str = ""  # a Unix socket, instead of host and port
    username: str | None = None
    password: str | None = None  # never shown: see __repr__
    db: int = 0
    tls: ssl.SSLContext | None = None

    def __repr__(self) -> str:
        where = self.path or f"{self.host}:{self.port}"
        return f"Address({where}, db={self.db}, tls={self.tls is not None})"

    @property
    def name(self) -> str:
        return self.path or f"{self.host}:{self.port}"


def _tls_context(query: dict[str, list[str]]) -> ssl.SSLContext:
    def first(name: str) -> str | None:
        values = query.get(name)
        return values[0] if values else None

    context = ssl.create_default_context(cafile=first("ssl_ca_certs"))
    if (first("ssl_cert_reqs") or "").lower() == "none":
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    certfile = first("ssl_certfile")
    if certfile:
        context.load_cert_chain(certfile, first("ssl_keyfile"))
    return context


def pack(args: tuple[Any, ...]) -> bytes:
    """A command in RESP, packed by hiredis (its stubs type the argument too narrowly)."""
    packed: bytes = hiredis.pack_command(args)
    return packed


def address_from_url(url: str) -> Address:
    """The address of ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = parse_qs(parts.query)
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    if scheme == "unix":
        db_text = (query.get("db") or ["0"])[0]
    else:
        db_text = (query.get("db") or [""])[0] or parts.path.lstrip("/") or "0"
    try:
        db = int(db_text)
    except ValueError:
        raise ConfigError(f"a Redis URL's database must be a number, got {db_text!r}") from None
    if scheme == "unix":
        return Address(path=parts.path, username=username, password=password, db=db)
    if scheme not in ("redis", "rediss"):
        raise ConfigError(f"unsupported Redis URL scheme {scheme!r}")
    return Address(
        host=parts.hostname or "localhost",
        port=parts.port or 6379,
        username=username,
        password=password,
        db=db,
        tls=_tls_context(query) if scheme == "rediss" else None,
    )


_ERRORS: dict[str, type[RedisError]] = {
    "NOSCRIPT": NoScriptError,
    "TRYAGAIN": TryAgainError,
    "CLUSTERDOWN": ClusterDownError,
    "LOADING": BusyLoadingError,
    "READONLY": ReadOnlyError,
}


def _error(reply: ResponseError) -> RedisError:
    """redis-py's exception for an error reply (hiredis gives them all as ResponseError)."""
    message = str(reply)
    code, _, rest = message.partition(" ")
    if code == "MOVED":
        return MovedError(rest)
    if code == "ASK":
        return AskError(rest)
    kind = _ERRORS.get(code)
    if kind is not None:
        return kind(message)
    return ResponseError(message)


class _Connection(asyncio.Protocol):
    """One connection; commands in flight are answered in order (see the module doc)."""

    def __init__(self, name: str, *, timeout_s: float, pending_max: int) -> None:
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._timeout_s = timeout_s
        self._pending_max = pending_max
        self._reader = hiredis.Reader(replyError=ResponseError)
        self._pending: collections.deque[asyncio.Future[Reply]] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._broken: RedisError | None = None
        # The watchdog: replies counted, and when that count last moved with commands waiting.
        self._replies = 0
        self._seen = 0
        self._since = 0.0
        self._watchdog: asyncio.TimerHandle | None = None

    @property
    def usable(self) -> bool:
        return self._broken is None and self._transport is not None

    @property
    def waiting(self) -> int:
        return len(self._pending)

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but implement it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        pending = self._pending
        reader.feed(data)
        while True:
            try:
                reply = reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(RedisConnectionError(f"Redis protocol error from {self.name}: {exc}"))
                return
            if reply is False:
                return
            self._replies += 1
            if not pending:
                self.abort(RedisConnectionError(f"a reply from {self.name} no command awaited"))
                return
            future = pending.popleft()
            if future.done():  # failed by an abort while its reply was on the way
                continue
            if isinstance(reply, ResponseError):
                error = _error(reply)
                future.set_exception(error)
                if isinstance(error, ReadOnlyError):
                    # A primary demoted to a replica (a Sentinel failover): the commands
                    # behind this one fail too, and the next connects to where the primary
                    # is now (the node's resolver asks again).
                    self.abort(RedisConnectionError(f"Redis at {self.name} is a replica now"))
                    return
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        detail = f": {exc}" if exc is not None else ""
        self._fail(RedisConnectionError(f"connection to Redis at {self.name} lost{detail}"))

    # -- commands -------------------------------------------------------------------------

    def send(self, packed: bytes) -> asyncio.Future[Reply]:
        """Write one packed command (after the others of this turn); its reply's future."""
        if self._broken is not None:
            raise type(self._broken)(*self._broken.args)
        if len(self._pending) >= self._pending_max:
            raise RedisConnectionError(
                f"{self._pending_max} commands already wait on Redis at {self.name}"
            )
        future: asyncio.Future[Reply] = Detached(loop=self._loop)
        if not self._pending:
            self._arm_watchdog()
        self._pending.append(future)
        self._out.append(packed)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if self._transport is None or self._broken is not None or not out:
            return
        self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _arm_watchdog(self) -> None:
        self._seen = self._replies
        self._since = self._loop.time()
        if self._watchdog is None:
            self._watchdog = self._loop.call_later(self._timeout_s / 2, self._check)

    def _check(self) -> None:
        self._watchdog = None
        if not self._pending or self._broken is not None:
            return
        now = self._loop.time()
        if self._replies != self._seen:
            self._seen, self._since = self._replies, now
        elif now - self._since >= self._timeout_s:
            self.abort(
                RedisTimeoutError(f"no reply from Redis at {self.name} in {self._timeout_s}s")
            )
            return
        self._watchdog = self._loop.call_later(self._timeout_s / 2, self._check)

    # -- ending ---------------------------------------------------------------------------

    def abort(self, error: RedisError) -> None:
        """Break the connection: every command waiting fails with ``error``."""
        self._fail(error)
        if self._transport is not None:
            self._transport.abort()

    def close(self) -> None:
        self._fail(RedisConnectionError(f"connection to Redis at {self.name} closed"))
        if self._transport is not None:
            self._transport.close()

    def _fail(self, error: RedisError) -> None:
        if self._broken is None:
            self._broken = error
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        self._out.clear()
        pending, self._pending = self._pending, collections.deque()
        for future in pending:
            if not future.done():
                future.set_exception(type(error)(*error.args))


async def _open(address: Address, *, timeout_s: float, pending_max: int) -> _Connection:
    """A connection to ``address``, logged in and on its database."""
    loop = asyncio.get_running_loop()
    connection = _Connection(address.name, timeout_s=timeout_s, pending_max=pending_max)
    try:
        async with asyncio.timeout(timeout_s):
            if address.path:
                await loop.create_unix_connection(lambda: connection, address.path)
            else:
                await loop.create_connection(
                    lambda: connection, address.host, address.port, ssl=address.tls
                )
            if address.password is not None:
                login = (
                    ("AUTH", address.username, address.password)
                    if address.username
                    else ("AUTH", address.password)
                )
                await connection.send(pack(login))
            if address.db:
                await connection.send(pack(("SELECT", address.db)))
    except TimeoutError:
        connection.abort(RedisConnectionError(f"connecting to Redis at {address.name} timed out"))
        raise RedisTimeoutError(f"connecting to Redis at {address.name} timed out") from None
    except OSError as exc:
        connection.abort(RedisConnectionError(str(exc)))
        raise RedisConnectionError(f"Error connecting to Redis at {address.name}: {exc}") from exc
    except RedisError:
        connection.abort(RedisConnectionError("login refused"))
        raise
    return connection


class Pipelined(Protocol):
    """What the ledger cache needs of a client: a command on the node of ``key``."""

    def keyed(self, key: str, *args: Any) -> asyncio.Future[Reply]: ...

    async def aclose(self) -> None: ...


class _Node:
    """One node's pipelined connection, opened on first use and again after it breaks."""

    def __init__(
        self,
        resolve: Callable[[], Awaitable[Address]],
        *,
        timeout_s: float,
        pending_max: int,
        tasks: set[asyncio.Task[None]],
    ) -> None:
        self._resolve = resolve
        self._timeout_s = timeout_s
        self._pending_max = pending_max
        self._connection: _Connection | None = None
        self._connecting: asyncio.Future[_Connection] | None = None
        self._tasks = tasks
        self._closed = False

    def send(self, packed: bytes) -> asyncio.Future[Reply]:
        connection = self._connection
        if connection is not None and connection.usable:
            return connection.send(packed)
        return self._send_when_connected((packed,))[-1]

    def send_many(self, packed: Sequence[bytes]) -> list[asyncio.Future[Reply]]:
        """Several commands in one write, their replies in order (ASKING and a command)."""
        connection = self._connection
        if connection is not None and connection.usable:
            return [connection.send(p) for p in packed]
        return self._send_when_connected(tuple(packed))

    def _send_when_connected(self, packed: tuple[bytes, ...]) -> list[asyncio.Future[Reply]]:
        loop = asyncio.get_running_loop()
        outers: list[asyncio.Future[Reply]] = [Detached(loop=loop) for _ in packed]

        async def run() -> None:
            try:
                connection = await self._connected()
                inners = [connection.send(p) for p in packed]
            except BaseException as exc:  # nothing was sent
                for outer in outers:
                    outer.set_exception(_as_redis_error(exc))
                if isinstance(exc, asyncio.CancelledError):
                    raise
                return
            for inner, outer in zip(inners, outers, strict=True):
                _chain(inner, outer)

        task = loop.create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return outers

    async def _connected(self) -> _Connection:
        if self._closed:
            raise RedisConnectionError("the Redis client is closed")
        connection = self._connection
        if connection is not None and connection.usable:
            return connection
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_future()
            try:
                address = await self._resolve()
                connection = await _open(
                    address, timeout_s=self._timeout_s, pending_max=self._pending_max
                )
            except BaseException as exc:
                self._connecting.set_exception(_as_redis_error(exc))
                self._connecting.exception()  # retrieved: each waiter raises it itself
                self._connecting = None
                raise
            old, self._connection = self._connection, connection
            if old is not None:
                old.close()
            self._connecting.set_result(connection)
            self._connecting = None
            return connection
        return await asyncio.shield(self._connecting)

    @property
    def connection(self) -> _Connection | None:
        return self._connection

    def close(self) -> None:
        self._closed = True
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _as_redis_error(exc: BaseException) -> BaseException:
    if isinstance(exc, RedisError | asyncio.CancelledError):
        return exc
    return RedisConnectionError(f"{type(exc).__name__}: {exc}")


def _chain(inner: asyncio.Future[Reply], outer: asyncio.Future[Reply]) -> None:
    def copy(done: asyncio.Future[Reply]) -> None:
        if outer.done():
            return
        error = done.exception()
        if error is not None:
            outer.set_exception(error)
        else:
            outer.set_result(done.result())

    inner.add_done_callback(copy)


class PipelinedRedis:
    """One Redis server (or the primary a resolver names, e.g. through Sentinel) over one
    pipelined connection."""

    def __init__(
        self,
        resolve: Address | Callable[[], Awaitable[Address]],
        *,
        timeout_s: float,
        pending_max: int = PENDING_MAX_DEFAULT,
    ) -> None:
        assert timeout_s > 0
        assert pending_max > 0
        if isinstance(resolve, Address):
            fixed = resolve

            async def resolve_fixed() -> Address:
                return fixed

            resolver: Callable[[], Awaitable[Address]] = resolve_fixed
        else:
            resolver = resolve
        self._tasks: set[asyncio.Task[None]] = set()
        self._node = _Node(
            resolver, timeout_s=timeout_s, pending_max=pending_max, tasks=self._tasks
        )

    def call(self, *args: Any) -> asyncio.Future[Reply]:
        """Send one command; the future of its reply (a :class:`Detached` one)."""
        return self._node.send(pack(args))

    def keyed(self, key: str, *args: Any) -> asyncio.Future[Reply]:
        return self._node.send(pack(args))

    async def execute(self, *args: Any) -> Reply:
        return await self.call(*args)

    async def connect(self) -> None:
        """Reach the server now (at start-up), rather than on the first command."""
        await self.execute("PING")

    @property
    def waiting(self) -> int:
        connection = self._node.connection
        return connection.waiting if connection is not None else 0

    async def aclose(self) -> None:
        self._node.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class PipelinedCluster:
    """A Redis Cluster: one pipelined connection per primary (see the module doc).

    ``topology`` is a connected redis-py ``RedisCluster`` of the same cluster; its node
    manager maps slots to nodes and is refreshed here after MOVED and node failures.
    """

    def __init__(
        self,
        topology: Any,
        *,
        timeout_s: float,
        username: str | None = None,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        pending_max: int = PENDING_MAX_DEFAULT,
    ) -> None:
        assert timeout_s > 0
        self._topology = topology
        self._timeout_s = timeout_s
        self._pending_max = pending_max
        self._login = (username, password, tls)
        self._nodes: dict[tuple[str, int], _Node] = {}
        self._moved: dict[int, tuple[str, int]] = {}  # slots MOVED since the last refresh
        self._tasks: set[asyncio.Task[None]] = set()
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = 0.0

    # -- routing --------------------------------------------------------------------------

    def _owner(self, slot: int) -> tuple[str, int]:
        moved = self._moved.get(slot)
        if moved is not None:
            return moved
        node = self._topology.nodes_manager.get_node_from_slot(slot)
        return (node.host, int(node.port))

    def _node(self, where: tuple[str, int]) -> _Node:
        node = self._nodes.get(where)
        if node is None:
            username, password, tls = self._login
            address = Address(
                host=where[0], port=where[1], username=username, password=password, tls=tls
            )

            async def resolve() -> Address:
                return address

            node = _Node(
                resolve, timeout_s=self._timeout_s, pending_max=self._pending_max,
                tasks=self._tasks,
            )  # fmt: skip
            self._nodes[where] = node
        return node

    def keyed(self, key: str, *args: Any) -> asyncio.Future[Reply]:
        slot = key_slot(key.encode())
        packed = pack(args)
        try:
            where = self._owner(slot)
        except (RedisError, KeyError, IndexError):  # no node covers the slot
            return self._retried(slot, packed, args, SlotNotCoveredError(f"slot {slot}"))
        inner = self._node(where).send(packed)
        outer: asyncio.Future[Reply] = Detached(loop=asyncio.get_running_loop())

        def settle(done: asyncio.Future[Reply]) -> None:
            error = done.exception()
            if error is None:
                outer.set_result(done.result())
            elif isinstance(
                error,
                MovedError
                | AskError
                | TryAgainError
                | ClusterDownError
                | RedisConnectionError
                | RedisTimeoutError,
            ):
                self._spawn(self._follow(slot, packed, args, error, where, outer))
            else:
                outer.set_exception(error)

        inner.add_done_callback(settle)
        return outer

    def _retried(
        self, slot: int, packed: bytes, args: tuple[Any, ...], error: BaseException
    ) -> asyncio.Future[Reply]:
        outer: asyncio.Future[Reply] = Detached(loop=asyncio.get_running_loop())
        self._spawn(self._follow(slot, packed, args, error, None, outer))
        return outer

    async def _follow(
        self,
        slot: int,
        packed: bytes,
        args: tuple[Any, ...],
        error: BaseException,
        where: tuple[str, int] | None,
        outer: asyncio.Future[Reply],
    ) -> None:
        """Follow redirections and retry what certainly did not run, until the timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        refused_retries = 0
        rerun_moved_script = _is_script(args)
        try:
            while True:
                if isinstance(error, MovedError):
                    self._moved[slot] = (error.host, int(error.port))
                    self._refresh_soon()
                    where = (error.host, int(error.port))
                    inner = self._node(where).send(packed)
                elif isinstance(error, AskError):
                    where = (error.host, int(error.port))
                    asking, inner = self._node(where).send_many((pack(("ASKING",)), packed))
                    with contextlib.suppress(RedisError):
                        await asking
                elif isinstance(error, TryAgainError):
                    if loop.time() > deadline:
                        raise error
                    await asyncio.sleep(REFUSED_PAUSE_S)
                    where = self._owner(slot)
                    inner = self._node(where).send(packed)
                elif isinstance(error, ClusterDownError | SlotNotCoveredError):
                    refused_retries += 1
                    if refused_retries > CLUSTER_RETRIES_MAX or loop.time() > deadline:
                        raise error
                    await self._refresh()
                    await asyncio.sleep(REFUSED_PAUSE_S)
                    where = self._owner(slot)
                    inner = self._node(where).send(packed)
                elif isinstance(error, RedisConnectionError | RedisTimeoutError):
                    # It may have run. Only a script whose slot now lives elsewhere runs
                    # again (the node fence makes that safe; see the module doc).
                    if not rerun_moved_script or where is None:
                        raise error
                    rerun_moved_script = False
                    await self._refresh(force=True)
                    now_at = self._owner(slot)
                    if now_at == where:
                        raise error
                    where = now_at
                    inner = self._node(where).send(packed)
                else:
                    raise error
                try:
                    reply = await inner
                except RedisError as exc:
                    error = exc
                else:
                    outer.set_result(reply)
                    return
        except BaseException as exc:
            if not outer.done():
                outer.set_exception(exc if isinstance(exc, RedisError) else _as_redis_error(exc))
            if isinstance(exc, asyncio.CancelledError):
                raise

    # -- topology -------------------------------------------------------------------------

    def _refresh_soon(self) -> None:
        loop = asyncio.get_running_loop()
        if self._refreshing is None and loop.time() - self._refreshed_at > TOPOLOGY_REFRESH_MIN_S:
            self._refreshing = loop.create_task(self._refresh_now())

    async def _refresh(self, *, force: bool = False) -> None:
        loop = asyncio.get_running_loop()
        if self._refreshing is None and (
            force or loop.time() - self._refreshed_at > TOPOLOGY_REFRESH_MIN_S
        ):
            self._refreshing = loop.create_task(self._refresh_now())
        if self._refreshing is not None:
            await asyncio.shield(self._refreshing)

    async def _refresh_now(self) -> None:
        try:
            await self._topology.nodes_manager.initialize()
            self._moved.clear()
        except RedisError as exc:
            log.warning("cluster topology not refreshed", extra={"error": type(exc).__name__})
        finally:
            self._refreshed_at = asyncio.get_running_loop().time()
            self._refreshing = None

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def connect(self) -> None:
        """Nothing to do: the topology client is connected; nodes connect on first use."""

    async def aclose(self) -> None:
        for node in self._nodes.values():
            node.close()
        for task in list(self._tasks):
            task.cancel()
        if self._refreshing is not None:
            self._refreshing.cancel()
        pending = [*self._tasks, *([self._refreshing] if self._refreshing else [])]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)


def _is_script(args: tuple[Any, ...]) -> bool:
    return len(args) >= 4 and str(args[0]).upper() in ("EVAL", "EVALSHA") and int(args[2]) >= 1
