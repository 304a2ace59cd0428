"""A TCP fault proxy between authswitch and a store, as asyncpg's adversity tests use: it
forwards bytes both ways, and can delay new connections, stall traffic, or cut every
connection, on command."""

from __future__ import annotations

import asyncio
import contextlib

from authswitch.adapters.redis.pipeline import Address, address_from_url


def target_of_dsn(dsn: str) -> tuple[str, int] | str:
    """Where a Postgres DSN points: (host, port), or the path of a Unix socket."""
    from urllib.parse import parse_qs, urlsplit

    parts = urlsplit(dsn)
    socket_dir = parse_qs(parts.query).get("host", [""])[0]
    port = parts.port or 5432
    if socket_dir.startswith("/"):
        return f"{socket_dir}/.s.PGSQL.{port}"
    return (parts.hostname or "127.0.0.1", port)


def dsn_through(dsn: str, port: int) -> str:
    """The DSN of the same database, reached at 127.0.0.1:``port`` (a proxy)."""
    from urllib.parse import urlsplit

    database = urlsplit(dsn).path.lstrip("/") or "postgres"
    return f"postgresql://postgres@127.0.0.1:{port}/{database}"


def target_of_redis_url(url: str) -> tuple[str, int] | str:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return (parts.hostname or "127.0.0.1", parts.port or 6379)


def redis_through(url: str, port: int) -> Address:
    """The address of the same Redis server and database, reached at 127.0.0.1:``port``."""
    direct = address_from_url(url)
    return Address(
        host="127.0.0.1", port=port, username=direct.username,
        password=direct.password, db=direct.db,
    )  # fmt: skip


class FaultProxy:
    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self.port = 0
        self.connect_delay_s = 0.0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.refuse = False
        self._cut_after_bytes = 0
        self._cuts_left = 0
        self.cuts = 0  # connections cut by cut_after

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def stall(self) -> None:
        """Hold all traffic (connections stay open; nothing moves)."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def cut(self) -> None:
        """Close every open connection (the next ones are accepted again)."""
        for client, upstream in list(self._pairs):
            for writer in (client, upstream):
                writer.transport.abort()
        self._pairs.clear()

    def cut_after(self, n_bytes: int, *, times: int = 1) -> None:
        """Cut a connection when ``n_bytes`` would have passed on it from client to server
        (at most that many are forwarded), for the next ``times`` connections that get that
        far; the others flow untouched."""
        assert n_bytes >= 0
        assert times >= 0
        self._cut_after_bytes = n_bytes
        self._cuts_left = times

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:  # owned, so that stop() can cancel a delayed accept
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        if self.refuse:
            writer.transport.abort()
            return
        if self.connect_delay_s:
            try:
                await asyncio.sleep(self.connect_delay_s)
            except asyncio.CancelledError:
                writer.transport.abort()
                raise
        try:
            if isinstance(self.target, str):
                up_reader, up_writer = await asyncio.open_unix_connection(self.target)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        for source, sink, upstream in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.ensure_future(self._pipe(source, sink, pair, upstream=upstream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        pair: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        *,
        upstream: bool = False,
    ) -> None:
        passed_bytes = 0  # client to server, on this connection
        try:
            while True:
                data = await source.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                if sink.transport.is_closing():  # cut while the traffic was held
                    break
                if (
                    upstream
                    and self._cuts_left
                    and passed_bytes + len(data) >= (self._cut_after_bytes)
                ):
                    self._cuts_left -= 1
                    self.cuts += 1
                    for writer in pair:
                        writer.transport.abort()
                    break
                passed_bytes += len(data)
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._pairs.discard(pair)
            with contextlib.suppress(Exception):
                sink.transport.abort()
