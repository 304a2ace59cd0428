"""Postgres "on another host" for the remote rows: a cluster of the benchmark's own, reached
through ``delay_ms`` of delay each way, while the server under test and Redis stay on
loopback.

Two ways to add the delay, tried in this order (``--remote-postgres auto``):

* ``netem``: a network namespace of our own (``ip netns add``) joined to this one by a
  veth pair, ``tc qdisc add dev <veth> root netem delay 1ms`` on both ends, and the cluster
  started inside the namespace, listening on its veth address. The kernel delays the
  packets: nothing in user space pays for it.
* ``proxy``: where the kernel has no netem (``sch_netem``), the cluster listens on a
  loopback port and ``benchmarks/loadgen/delay_proxy`` (C++, epoll and an absolute timerfd,
  SCHED_FIFO) holds every chunk ``delay_ms`` before passing it on, each way. Its CPU is
  counted with the rows (the ``delay_proxy`` column).

The cluster: ``initdb`` and ``pg_ctl`` from ``/usr/lib/postgresql/<major>/bin`` (the major
version of the machine's Postgres when installed), run as the ``postgres`` user, data in a
temporary directory on the same filesystem as the machine's; trust authentication for the
benchmark's addresses only; fsync and synchronous_commit on, and the machine cluster's own
values of the settings that shape a commit's cost (``COPIED_SETTINGS``). Its socket
directory is its data directory, so it never touches the machine cluster's. The delay is
verified before any row runs: ``SELECT 1`` round trips must take at least twice the delay.

``stop()`` (idempotent, also after a failed or interrupted ``start()``) stops the cluster
(``pg_ctl stop``, then SIGKILL to its postmaster by pid if that fails), the proxy (by pid),
removes the data directory and deletes the namespace (with it, the veth pair). Nothing is
ever stopped or looked for by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.process import ServerProcess, ServerSpec
from benchmarks.system import port_is_free, start_ticks

__all__ = ["COPIED_SETTINGS", "RemotePostgres", "RemoteUnavailable"]

MODES = ("auto", "netem", "proxy")
# Settings of the machine's cluster the remote one takes, so that a commit costs the same
# there (fsync and synchronous_commit are forced on whatever the machine says).
COPIED_SETTINGS = (
    "shared_buffers",
    "max_connections",
    "wal_sync_method",
    "full_page_writes",
    "wal_buffers",
    "max_wal_size",
    "min_wal_size",
    "checkpoint_timeout",
    "autovacuum",
    "work_mem",
)
ROUND_TRIPS = 50  # SELECT 1 round trips measured to verify the delay
PORT = 55432  # inside its own namespace (netem); the first free one from here otherwise


class RemoteUnavailable(Exception):
    """The delayed Postgres cannot be built here; the message says why."""


def _run(argv: list[str], what: str, timeout_s: float = 120.0) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout_s, check=False, cwd="/"
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RemoteUnavailable(f"{what}: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise RemoteUnavailable(f"{what}: {detail[-1] if detail else f'exit {done.returncode}'}")
    return done.stdout


def _running(pid: int, ticks: int | None) -> bool:
    """``pid`` is still the process that started at ``ticks``, and not a zombie."""
    if ticks is None or start_ticks(pid) != ticks:
        return False
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] not in "ZX"
    return False


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class RemotePostgres:
    def __init__(
        self,
        *,
        mode: str,
        local_dsn: str,
        proxy_binary: Path,
        workdir: Path,
        say: Callable[[str], None],
        delay_ms: float = 1.0,
        free_port: Callable[[], int] | None = None,
    ) -> None:
        assert mode in MODES
        self.mode = mode
        self.local_dsn = local_dsn
        self.proxy_binary = proxy_binary
        self.workdir = workdir
        self.say = say
        self.delay_ms = delay_ms
        self.free_port = free_port
        tag = str(os.getpid())
        self.namespace = f"authswitch-bench-{tag}"
        self.veth_host, self.veth_ns = f"asb{tag}h", f"asb{tag}n"
        self.dsn = ""  # the server's DSN (database postgres), once started
        self.used = ""  # netem | proxy, once started
        self.why_not_netem: str | None = None
        self.round_trip_ms: dict[str, float] = {}
        self._netns = False
        self._data_dir: Path | None = None
        self._bin: Path | None = None
        self._postmaster: tuple[int, int | None] | None = None  # pid, start time
        self._proxy: ServerProcess | None = None

    # -- what the harness reads ------------------------------------------------------------

    @property
    def proxy_pid(self) -> int | None:
        return self._proxy.pid if self._proxy is not None else None

    def describe(self) -> dict[str, Any]:
        return {
            "delay": self.used,
            "delay_ms_each_way": self.delay_ms,
            "why_not_netem": self.why_not_netem,
            "select_1_round_trip_ms": self.round_trip_ms,
            "dsn": self.dsn,
        }

    # -- start ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Build it all; raises RemoteUnavailable (having removed what it built) when it
        cannot."""
        self._warn_leftovers()
        try:
            if self.mode in ("auto", "netem"):
                try:
                    await self._start_netem()
                    self.used = "netem"
                    await self._verify()
                except RemoteUnavailable as exc:
                    if self.mode == "netem":
                        raise
                    self.why_not_netem = str(exc)
                    self.say(f"  netem unavailable ({exc}): delaying through the C++ proxy")
                    self.stop()
            if not self.used:
                await self._start_proxied()
                self.used = "proxy"
                await self._verify()
        except BaseException:
            self.stop()
            raise

    def _warn_leftovers(self) -> None:
        """Namespaces of earlier runs that could not clean up (killed outright) are named
        after their pid: said, not removed (they are not this run's)."""
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            listed = subprocess.run(
                ["ip", "netns", "list"], capture_output=True, text=True, check=False
            ).stdout
            for line in listed.splitlines():
                name = line.split()[0] if line.split() else ""
                pid = name.removeprefix("authswitch-bench-")
                ours = name.startswith("authswitch-bench-") and pid.isdigit()
                if ours and not Path(f"/proc/{pid}").exists():
                    self.say(
                        f"  a namespace left by an earlier run: {name} "
                        f"(remove it with: ip netns del {name})"
                    )

    async def _start_netem(self) -> None:
        ns, host, inner = self.namespace, self.veth_host, self.veth_ns
        subnet = self._free_subnet()
        host_ip, ns_ip = f"{subnet}.1", f"{subnet}.2"
        _run(["ip", "netns", "add", ns], "cannot create a network namespace")
        self._netns = True
        _run(["ip", "link", "add", host, "type", "veth", "peer", "name", inner], "veth pair")
        _run(["ip", "link", "set", inner, "netns", ns], "veth into the namespace")
        _run(["ip", "addr", "add", f"{host_ip}/30", "dev", host], "veth address")
        _run(["ip", "link", "set", host, "up"], "veth up")
        in_ns = ["ip", "netns", "exec", ns]
        _run([*in_ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", inner], "veth address (ns)")
        _run([*in_ns, "ip", "link", "set", inner, "up"], "veth up (ns)")
        _run([*in_ns, "ip", "link", "set", "lo", "up"], "loopback up (ns)")
        delay = f"{self.delay_ms * 1000:g}us"
        _run(["tc", "qdisc", "add", "dev", host, "root", "netem", "delay", delay], "tc netem")
        _run([*in_ns, "tc", "qdisc", "add", "dev", inner, "root", "netem", "delay", delay],
             "tc netem (ns)")  # fmt: skip
        await self._start_cluster(ns_ip, PORT, trusted=f"{subnet}.0/30", prefix=in_ns)
        self.dsn = f"postgresql://postgres@{ns_ip}:{PORT}/postgres"

    async def _start_proxied(self) -> None:
        cluster_port = self._port()
        await self._start_cluster("127.0.0.1", cluster_port, trusted="127.0.0.1/32", prefix=[])
        proxy_port = self._port()  # once the cluster holds its own
        if not self.proxy_binary.exists():
            raise RemoteUnavailable(f"{self.proxy_binary} is not built")
        listen = f"127.0.0.1:{proxy_port}"
        argv = [
            str(self.proxy_binary),
            "--listen", listen,
            "--upstream", f"127.0.0.1:{cluster_port}",
            "--delay-us", str(round(self.delay_ms * 1000)),
            "--realtime", "1",
        ]  # fmt: skip
        spec = ServerSpec(argv, health=False, ready_line="delay_proxy listening on")
        proxy = ServerProcess("delay_proxy", spec, listen, self.workdir / "delay_proxy.log")
        await proxy.start(timeout_s=10)
        self._proxy = proxy
        self.dsn = f"postgresql://postgres@{listen}/postgres"

    def _port(self) -> int:
        if self.free_port is not None:
            return self.free_port()
        for port in range(PORT, PORT + 200):
            if port_is_free("127.0.0.1", port):
                return port
        raise RemoteUnavailable("no free port for the remote Postgres")

    @staticmethod
    def _free_subnet() -> str:
        """A 10.254.X.0/30 no address or route of this host is in."""
        used = _run(["ip", "-4", "-o", "addr", "show"], "ip addr") + _run(
            ["ip", "-4", "route", "show"], "ip route"
        )
        for third in random.sample(range(1, 255), 254):
            if f"10.254.{third}." not in used:
                return f"10.254.{third}"
        raise RemoteUnavailable("no free 10.254.X.0/30 subnet")

    async def _machine_settings(self) -> dict[str, str]:
        """The machine cluster's values of COPIED_SETTINGS (with their units)."""
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            conn = await asyncpg.connect(self.local_dsn, timeout=5)
            try:
                rows = await conn.fetch(
                    "SELECT name, setting, unit FROM pg_settings WHERE name = ANY($1::text[])",
                    list(COPIED_SETTINGS),
                )
            finally:
                await conn.close()
            found = {}
            for row in rows:
                unit = row["unit"] or ""
                if unit == "8kB":  # shared_buffers, wal_buffers: in 8 kB pages
                    found[row["name"]] = f"{int(row['setting']) * 8}kB"
                else:
                    found[row["name"]] = f"{row['setting']}{unit}"
            return found
        return {}

    def _postgres_bin(self, version: str) -> Path:
        major = version.split(".", maxsplit=1)[0]
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not candidates:
            raise RemoteUnavailable("no Postgres server binaries in /usr/lib/postgresql/*/bin")
        chosen = next((c for c in candidates if c.parent.parent.name == major), candidates[-1])
        return chosen.parent

    async def _start_cluster(
        self, address: str, port: int, *, trusted: str, prefix: list[str]
    ) -> None:
        version = ""
        with contextlib.suppress(OSError, asyncpg.PostgresError):
            conn = await asyncpg.connect(self.local_dsn, timeout=5)
            try:
                version = str(await conn.fetchval("SHOW server_version"))
            finally:
                await conn.close()
        self._bin = bin_ = self._postgres_bin(version)
        settings = await self._machine_settings()
        loop = asyncio.get_running_loop()
        self._data_dir = data = await loop.run_in_executor(
            None, self._init_cluster, bin_, address, port, trusted, settings
        )
        as_postgres = ["runuser", "-u", "postgres", "--"]

        def start() -> None:
            _run(
                [*prefix, *as_postgres, str(bin_ / "pg_ctl"), "-D", str(data),
                 "-l", str(data / "postgres.log"), "-w", "-t", "60", "start"],
                "pg_ctl start",
            )  # fmt: skip

        await loop.run_in_executor(None, start)
        pid = int((data / "postmaster.pid").read_text().split()[0])
        self._postmaster = (pid, start_ticks(pid))
        self.say(
            f"  remote Postgres {bin_.parent.name}: {data}, listening on {address}:{port}"
            + (f" in namespace {self.namespace}" if prefix else "")
        )

    def _init_cluster(
        self, bin_: Path, address: str, port: int, trusted: str, settings: dict[str, str]
    ) -> Path:
        """initdb in a new directory beside the machine cluster's data (same filesystem, so
        the same fsync), owned by the postgres user; then its settings and trusted subnet."""
        data = Path(tempfile.mkdtemp(prefix="authswitch-bench-pg-", dir=tempfile.gettempdir()))
        self._data_dir = data  # removed by stop() from now on, whatever happens next
        shutil.chown(data, "postgres", "postgres")
        data.chmod(0o700)
        _run(
            ["runuser", "-u", "postgres", "--", str(bin_ / "initdb"), "-D", str(data),
             "-U", "postgres", "--auth=trust", "--no-sync", "--no-instructions", "-E", "UTF8"],
            "initdb",
        )  # fmt: skip
        lines = [
            "# authswitch benchmarks: the remote rows' cluster",
            f"listen_addresses = {_quote(address)}",
            f"port = {port}",
            f"unix_socket_directories = {_quote(str(data))}",
            *(f"{name} = {_quote(value)}" for name, value in settings.items()),
            "fsync = on",
            "synchronous_commit = on",
        ]
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(lines) + "\n")
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {trusted} trust\n")
        return data

    async def _verify(self) -> None:
        """``SELECT 1`` round trips through the delay, and to the machine's Postgres on
        loopback for comparison: through the delay they must take twice the delay at least."""

        async def round_trips(dsn: str) -> list[float]:
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                await conn.fetchval("SELECT 1")
                took = []
                for _ in range(ROUND_TRIPS):
                    started = time.perf_counter()
                    await conn.fetchval("SELECT 1")
                    took.append((time.perf_counter() - started) * 1000)
            finally:
                await conn.close()
            return sorted(took)

        remote = await round_trips(self.dsn)
        local = await round_trips(self.local_dsn)
        self.round_trip_ms = {
            "min": round(remote[0], 3),
            "p50": round(statistics.median(remote), 3),
            "max": round(remote[-1], 3),
            "loopback_p50": round(statistics.median(local), 3),
        }
        self.say(
            f"  SELECT 1 through the delay ({self.used}): min {remote[0]:.2f} ms, p50 "
            f"{statistics.median(remote):.2f} ms (loopback p50 {statistics.median(local):.2f} ms)"
        )
        if remote[0] < 2 * self.delay_ms * 0.95:
            raise RemoteUnavailable(
                f"the delay is not in effect: SELECT 1 took {remote[0]:.2f} ms at best "
                f"through {self.used}, expected at least {2 * self.delay_ms:g} ms"
            )

    # -- stop -------------------------------------------------------------------------------

    def stop(self) -> None:
        """Remove everything this object built, whatever state it is in; never raises."""
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            proxy.stop(timeout_s=5)
        data, self._data_dir = self._data_dir, None
        if data is not None:
            self._stop_cluster(data)
            shutil.rmtree(data, ignore_errors=True)
        if self._netns:
            self._netns = False
            for argv in (
                ["ip", "netns", "del", self.namespace],
                ["ip", "link", "del", self.veth_host],  # gone with the namespace, normally
            ):
                subprocess.run(argv, capture_output=True, check=False)
        self.dsn = ""
        self.used = ""

    def _stop_cluster(self, data: Path) -> None:
        postmaster, self._postmaster = self._postmaster, None
        said = ""
        if self._bin is not None and (data / "postmaster.pid").exists():
            try:
                done = subprocess.run(
                    ["runuser", "-u", "postgres", "--", str(self._bin / "pg_ctl"), "-D",
                     str(data), "-m", "fast", "-w", "-t", "30", "stop"],
                    capture_output=True, text=True, check=False, timeout=40, cwd="/",
                )  # fmt: skip
                said = (done.stderr or done.stdout).strip()
            except (OSError, subprocess.SubprocessError) as exc:
                said = str(exc)
        if postmaster is None:
            return
        pid, ticks = postmaster
        # pg_ctl returns once the postmaster removed its pid file, just before it exits.
        deadline = time.monotonic() + 5
        while _running(pid, ticks) and time.monotonic() < deadline:
            time.sleep(0.05)
        if _running(pid, ticks):  # still ours: kill it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.say(f"  remote Postgres did not stop ({said}): its postmaster {pid} killed")
