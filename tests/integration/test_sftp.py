"""SftpSink against a real SFTP server (asyncssh's own, chrooted to a temporary directory):
intact uploads, atomic replacement, a connection cut mid-upload and retried, tries running
out, and the failures that must not be retried."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh
import pytest

from authswitch.adapters.sftp import DeliveryError, SftpSink
from tests.support.proxy import FaultProxy
from tests.support.sftp import SftpServer, known_hosts_line, new_key, serve_sftp

pytestmark = pytest.mark.timeout(60)

MIB = 1024 * 1024
NAME = "balances-20250131.csv"
PARTIAL = f".{NAME}.partial"
LOGGER = "authswitch.adapters.sftp"


class Sleeps:
    """The injected sleep: records each pause (in seconds) instead of waiting, and runs an
    optional check between tries."""

    def __init__(self, between: Callable[[], None] | None = None) -> None:
        self.delays_s: list[float] = []
        self.between = between

    async def __call__(self, delay_s: float) -> None:
        self.delays_s.append(delay_s)
        if self.between is not None:
            self.between()
        await asyncio.sleep(0)


def sink_to(
    server: SftpServer,
    sleep: Sleeps,
    *,
    port: int | None = None,
    client_key: bytes | None = None,
    known_hosts: bytes | None = None,
    remote_dir: str = "inbound",
    attempts: int = 4,
    connect_timeout_s: float = 10.0,
) -> SftpSink:
    return SftpSink(
        host=server.host,
        port=server.port if port is None else port,
        username="reports",
        client_key=server.client_key if client_key is None else client_key,
        known_hosts=server.known_hosts if known_hosts is None else known_hosts,
        remote_dir=remote_dir,
        attempts=attempts,
        initial_backoff_ms=500,
        max_backoff_ms=8_000,
        connect_timeout_s=connect_timeout_s,
        sleep=sleep,
    )


def local_file(tmp_path: Path, size_bytes: int) -> tuple[Path, bytes]:
    content = os.urandom(size_bytes)
    path = tmp_path / "spool" / NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path, content


@dataclass
class Watcher:
    """Reads a path over and over while a put runs: what a collector polling the server's
    directory would see."""

    path: Path
    allowed: set[bytes]
    reads: int = 0
    missing: int = 0
    unexpected: list[int] = field(default_factory=list)  # sizes of contents not allowed

    async def run(self) -> None:
        while True:
            try:
                data = self.path.read_bytes()
            except FileNotFoundError:
                self.missing += 1
            else:
                self.reads += 1
                if data not in self.allowed:
                    self.unexpected.append(len(data))
            await asyncio.sleep(0.001)


@contextlib.asynccontextmanager
async def watching(path: Path, allowed: set[bytes]) -> AsyncIterator[Watcher]:
    watcher = Watcher(path, allowed)
    task = asyncio.ensure_future(watcher.run())
    try:
        yield watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[SftpServer]:
    (tmp_path / "remote" / "inbound").mkdir(parents=True)
    async with serve_sftp(tmp_path / "remote") as serving:
        yield serving


def inbound(server: SftpServer) -> Path:
    return server.root / "inbound"


@pytest.mark.parametrize("key_format", ["openssh", "pkcs8-pem"])
async def test_a_file_of_a_few_mb_arrives_intact_under_its_final_name(
    server: SftpServer, tmp_path: Path, key_format: str
) -> None:
    local, content = local_file(tmp_path, 5 * MIB + 123)
    key = asyncssh.import_private_key(server.client_key).export_private_key(key_format)
    sleeps = Sleeps()
    sink = sink_to(server, sleeps, client_key=key)

    await sink.put(local, NAME)

    assert (inbound(server) / NAME).read_bytes() == content
    assert sorted(os.listdir(inbound(server))) == [NAME]  # no temporary left
    assert server.connections == 1
    assert sleeps.delays_s == []
    assert local.read_bytes() == content  # the spool file is the caller's, untouched


async def test_a_connection_cut_mid_upload_is_retried_and_never_shows_a_partial_file(
    server: SftpServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local, content = local_file(tmp_path, 4 * MIB)
    final, partial = inbound(server) / NAME, inbound(server) / PARTIAL
    proxy = FaultProxy((server.host, server.port))
    await proxy.start()
    proxy.cut_after(1 * MIB)  # the first connection dies a quarter of the way in
    seen_between: list[tuple[bool, bool, int]] = []

    def between() -> None:
        size = partial.stat().st_size if partial.exists() else -1
        seen_between.append((final.exists(), partial.exists(), size))

    sleeps = Sleeps(between)
    sink = sink_to(server, sleeps, port=proxy.port, known_hosts=server.known_hosts_for(proxy.port))
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            async with watching(final, {content}) as watcher:
                await sink.put(local, NAME)
    finally:
        await proxy.stop()

    assert proxy.cuts == 1
    assert server.connections == 2  # the cut try and the one that succeeded
    assert len(sleeps.delays_s) == 1
    # Between the tries: the partial upload exists only under its temporary name.
    [(final_existed, partial_existed, partial_size)] = seen_between
    assert not final_existed
    assert partial_existed
    assert partial_size < len(content)
    assert watcher.unexpected == []  # never a partial file under the final name
    assert final.read_bytes() == content
    assert sorted(os.listdir(inbound(server))) == [NAME]
    [retry] = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert retry.__dict__["attempt"] == 1
    assert retry.__dict__["destination"] == sink.describe()
    assert retry.__dict__["error"] in {
        "ConnectionLost",
        "SFTPConnectionLost",
        "ConnectionResetError",
        "BrokenPipeError",
    }


@pytest.mark.parametrize("posix_rename", [True, False], ids=["posix-rename", "remove-rename"])
async def test_an_existing_file_is_replaced_atomically(tmp_path: Path, posix_rename: bool) -> None:
    (tmp_path / "remote" / "inbound").mkdir(parents=True)
    async with serve_sftp(tmp_path / "remote", posix_rename=posix_rename) as server:
        old = os.urandom(3 * MIB)
        final = inbound(server) / NAME
        final.write_bytes(old)
        local, new = local_file(tmp_path, 2 * MIB)
        sink = sink_to(server, Sleeps())

        async with watching(final, {old, new}) as watcher:
            await sink.put(local, NAME)
            await asyncio.sleep(0.01)  # a few reads after the rename

        assert final.read_bytes() == new
        assert sorted(os.listdir(inbound(server))) == [NAME]
        assert watcher.unexpected == []  # only ever the whole old or the whole new file
        assert watcher.reads > 0
        if posix_rename:
            assert watcher.missing == 0  # replaced in one step: never absent
        assert server.connections == 1


async def test_a_leftover_temporary_of_an_earlier_try_is_replaced(
    server: SftpServer, tmp_path: Path
) -> None:
    (inbound(server) / PARTIAL).write_bytes(b"junk of a failed try " * 100_000)
    local, content = local_file(tmp_path, 1 * MIB)

    await sink_to(server, Sleeps()).put(local, NAME)

    assert (inbound(server) / NAME).read_bytes() == content
    assert sorted(os.listdir(inbound(server))) == [NAME]


async def test_a_stopped_server_exhausts_the_tries_with_one_delivery_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve_sftp(tmp_path / "remote") as server:
        pass  # stopped: its port now refuses connections
    local, _ = local_file(tmp_path, 1000)
    sleeps = Sleeps()
    sink = sink_to(server, sleeps, attempts=4)

    with (
        caplog.at_level(logging.DEBUG, logger=LOGGER),
        pytest.raises(DeliveryError) as raised,
    ):
        await sink.put(local, NAME)

    # Three pauses, so four tries; each pause in the upper half of its doubling ceiling.
    assert len(sleeps.delays_s) == 3
    for retry, delay_s in enumerate(sleeps.delays_s, start=1):
        ceiling_s = min(8.0, 0.5 * 2 ** (retry - 1))
        assert ceiling_s / 2 <= delay_s <= ceiling_s, (retry, delay_s)
    message = str(raised.value)
    assert sink.describe() in message
    assert "ConnectionRefusedError" in message
    assert isinstance(raised.value.__cause__, ConnectionRefusedError)
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]
    assert [r.__dict__["attempt"] for r in warnings] == [1, 2, 3]
    assert {r.__dict__["error"] for r in warnings} == {"ConnectionRefusedError"}
    # No key material anywhere: not in the error, not in any log line of the sink.
    key_body = b"".join(server.client_key.splitlines()[1:-1]).decode()
    texts = [message, *(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)]
    assert not [t for t in texts if key_body[:40] in t or "PRIVATE KEY" in t]


async def test_a_server_that_drops_every_connection_is_tried_exactly_attempts_times(
    tmp_path: Path,
) -> None:
    accepted: list[int] = []

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.transport.abort()

    listener = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    try:
        async with serve_sftp(tmp_path / "remote") as server:
            sink = sink_to(server, Sleeps(), port=port, attempts=3)
            local, _ = local_file(tmp_path, 1000)
            with pytest.raises(DeliveryError) as raised:
                await sink.put(local, NAME)
    finally:
        listener.close()
        await listener.wait_closed()
    assert len(accepted) == 3
    assert isinstance(raised.value.__cause__, asyncssh.ConnectionLost | OSError)


async def test_a_blackholed_server_times_out_instead_of_hanging(
    server: SftpServer, tmp_path: Path
) -> None:
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepted, never answered

    listener = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    sleeps = Sleeps()
    sink = sink_to(server, sleeps, port=port, attempts=2, connect_timeout_s=0.3)
    local, _ = local_file(tmp_path, 1000)
    try:
        with pytest.raises(DeliveryError) as raised:
            await sink.put(local, NAME)
    finally:
        for writer in held:
            writer.transport.abort()
        listener.close()
        await listener.wait_closed()
    assert len(held) == 2
    assert len(sleeps.delays_s) == 1
    assert isinstance(raised.value.__cause__, TimeoutError)


async def test_a_wrong_client_key_is_refused_without_retry(
    server: SftpServer, tmp_path: Path
) -> None:
    local, _ = local_file(tmp_path, 1000)
    sleeps = Sleeps()
    sink = sink_to(server, sleeps, client_key=new_key().export_private_key("openssh"))

    with pytest.raises(asyncssh.PermissionDenied):
        await sink.put(local, NAME)

    assert server.connections == 1
    assert sleeps.delays_s == []
    assert os.listdir(inbound(server)) == []


@pytest.mark.parametrize("trusted", ["another-key", "nothing"])
async def test_an_untrusted_host_key_is_refused_without_retry(
    server: SftpServer, tmp_path: Path, trusted: str
) -> None:
    local, _ = local_file(tmp_path, 1000)
    known_hosts = known_hosts_line(new_key(), server.port) if trusted == "another-key" else b""
    sleeps = Sleeps()
    sink = sink_to(server, sleeps, known_hosts=known_hosts)

    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await sink.put(local, NAME)

    assert server.connections == 1
    assert sleeps.delays_s == []
    assert os.listdir(inbound(server)) == []


async def test_permission_denied_on_the_remote_path_is_not_retried(tmp_path: Path) -> None:
    (tmp_path / "remote" / "locked").mkdir(parents=True)
    async with serve_sftp(tmp_path / "remote", denied_dirs=frozenset({"locked"})) as server:
        local, _ = local_file(tmp_path, 1000)
        sleeps = Sleeps()
        sink = sink_to(server, sleeps, remote_dir="locked")

        with pytest.raises(asyncssh.SFTPPermissionDenied):
            await sink.put(local, NAME)

        assert server.connections == 1
        assert sleeps.delays_s == []
        assert os.listdir(server.root / "locked") == []


@pytest.mark.parametrize("name", ["../x", ".hidden", "a/b", "", "a\\b", "/abs"])
async def test_a_name_that_is_not_a_plain_file_name_is_refused_before_any_io(
    server: SftpServer, tmp_path: Path, name: str
) -> None:
    local, _ = local_file(tmp_path, 1000)

    with pytest.raises(ValueError, match="plain file name"):
        await sink_to(server, Sleeps()).put(local, name)

    assert server.connections == 0
    assert sorted(p.name for p in server.root.rglob("*")) == ["inbound"]


async def test_a_missing_local_file_fails_at_once(server: SftpServer, tmp_path: Path) -> None:
    sleeps = Sleeps()
    with pytest.raises(FileNotFoundError):
        await sink_to(server, sleeps).put(tmp_path / "absent.csv", NAME)
    assert server.connections == 0
    assert sleeps.delays_s == []


async def test_describe_names_the_destination_and_no_secret(server: SftpServer) -> None:
    relative = sink_to(server, Sleeps())
    assert relative.describe() == f"sftp://reports@127.0.0.1:{server.port}/~/inbound"
    home = sink_to(server, Sleeps(), remote_dir=".")
    assert home.describe() == f"sftp://reports@127.0.0.1:{server.port}/~"
    absolute = sink_to(server, Sleeps(), remote_dir="/srv/in")
    assert absolute.describe() == f"sftp://reports@127.0.0.1:{server.port}/srv/in"
    assert "PRIVATE" not in relative.describe()


async def test_a_secret_that_is_not_a_key_fails_at_construction_without_echoing_it(
    server: SftpServer,
) -> None:
    secret = b"-----BEGIN OPENSSH PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n"
    with pytest.raises(ValueError, match="client_key") as raised:
        sink_to(server, Sleeps(), client_key=secret)
    assert "bm90IGEga2V5" not in str(raised.value)
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__
