"""PostgreSQL servers a test owns: initialised in a temporary directory, listening on their
own port on 127.0.0.1, killed with SIGKILL and restarted, and streaming to standbys made
with ``pg_basebackup -R`` and promoted by the test.

The binaries are Debian's (``/usr/lib/postgresql/<newest>/bin``) when installed, else the
ones in the ``pgserver`` wheel (a dependency), so the tests run everywhere. Postgres refuses
to run as root: under root every command runs as the ``postgres`` user (Debian's), or as the
``pgserver`` user the embedded server already uses (created when missing), and the data
directories belong to that user.

The postmaster is a child of the test (``postgres -D``, not ``pg_ctl``), so its death is
seen and reaped at once. ``kill()`` is the crash the issue asks for: SIGKILL of the
postmaster, and then of any backend still alive (on Linux they notice the postmaster's death
and exit by themselves within moments; a host failure takes them all at once). Every process
and directory is removed on the way out, whatever happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg

from tests.support.server import free_port

START_TIMEOUT_S = 60.0
_DEBIAN_ROOT = Path("/usr/lib/postgresql")
_NEEDED = ("initdb", "postgres", "pg_basebackup", "pg_ctl")
_PR_SET_CHILD_SUBREAPER = 36


def postgres_bin_dir() -> Path | None:
    """Debian's newest PostgreSQL binaries, else pgserver's, else None."""
    candidates: list[Path] = []
    if _DEBIAN_ROOT.is_dir():
        versions = [p for p in _DEBIAN_ROOT.iterdir() if p.name.isdigit()]
        candidates += [p / "bin" for p in sorted(versions, key=lambda p: int(p.name), reverse=True)]
    # Found without importing it (its import warns about XDG_RUNTIME_DIR).
    spec = importlib.util.find_spec("pgserver")
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(Path(location) / "pginstall" / "bin")
    for directory in candidates:
        if all(os.access(directory / name, os.X_OK) for name in _NEEDED):
            return directory
    return None


def _run_as_user() -> pwd.struct_passwd | None:
    """Who runs Postgres: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(["useradd", "-s", "/bin/sh", "pgserver"], check=True, capture_output=True)
    return pwd.getpwnam("pgserver")


def _children_of(pid: int) -> list[int]:
    """Every live process whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs; reaps it when it is ours (a subreaper's orphan)."""
    with contextlib.suppress(ChildProcessError):
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


def _subreaper(on: bool) -> None:
    """Become (or stop being) the reaper of orphaned descendants: a killed postmaster's
    backends are then ours to reap, instead of zombies under a PID 1 that may never reap."""
    if not Path("/proc/self").exists():
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0)


class PostgresServer:
    """One PostgreSQL server in ``directory`` on ``port``."""

    def __init__(self, directory: Path, port: int, bin_dir: Path, user: pwd.struct_passwd | None):
        self.directory = directory
        self.data = directory / "data"
        self.port = port
        self.bin_dir = bin_dir
        self.user = user
        self.process: subprocess.Popen[bytes] | None = None
        self.backends: list[int] = []  # the postmaster's children when it was last killed

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def _command(self, program: str, *args: str) -> list[str]:
        """``program`` of ``bin_dir`` with ``args``, as the server's user. Through setpriv,
        which execs it: subprocess's own ``user=`` forks without vfork, and a fork of a
        process with gRPC threads can crash in the child (seen: SIGSEGV before exec)."""
        command = [str(self.bin_dir / program), *args]
        if self.user is None:
            return command
        return [
            "setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}",
            "--init-groups", "--", *command,
        ]  # fmt: skip

    def run(self, *args: str, timeout_s: float = 120.0) -> str:
        """A PostgreSQL program of ``bin_dir``, as the server's user; its output."""
        done = subprocess.run(
            self._command(*args), capture_output=True, text=True, timeout=timeout_s,
            check=False, cwd=self.directory,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done.stdout

    def configure(self, **settings: str | int) -> None:
        """Append settings to postgresql.conf (the last one of a name wins)."""
        lines = [f"{name} = '{value}'" for name, value in settings.items()]
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n".join(lines) + "\n")

    def start(self) -> None:
        """Start the postmaster (crash recovery first, after a kill). Not yet ready: see
        :meth:`wait_ready`."""
        assert not self.running
        # A standby's walreceiver, or the postmaster of a killed server, may leave a stale
        # postmaster.pid behind only if a process still runs: wait for them in kill().
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self._command("postgres", "-D", str(self.data)),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, cwd=self.directory,
            )  # fmt: skip

    async def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until the server accepts connections and answers a query."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.running:
                assert self.process is not None
                raise AssertionError(
                    f"postgres on {self.port} exited {self.process.returncode}: {self.log()}"
                )
            try:
                conn = await asyncpg.connect(self.dsn, timeout=2)
            except (OSError, asyncpg.PostgresError, TimeoutError):
                pass
            else:
                try:
                    await conn.fetchval("SELECT 1")
                    return
                except asyncpg.PostgresError:
                    pass
                finally:
                    await conn.close()
            if time.monotonic() > deadline:
                raise AssertionError(f"postgres on {self.port} not ready in {timeout_s}s")
            await asyncio.sleep(0.05)

    def kill(self, *, whole_server: bool = False, wait_s: float = 20.0) -> None:
        """SIGKILL the postmaster. Its backends notice and exit by themselves; with
        ``whole_server`` they are SIGKILLed too, at once (a host failure). Returns once no
        process of the server is left."""
        assert self.process is not None
        children = _children_of(self.process.pid)
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        if whole_server:
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.backends = children
        deadline = time.monotonic() + wait_s
        while any(_alive(pid) for pid in children):
            if time.monotonic() > deadline:
                for pid in children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL after 10 s."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill(whole_server=True)
        self.process = None

    async def execute(self, query: str, *args: Any) -> Any:
        conn = await asyncpg.connect(self.dsn, timeout=5)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    def log(self) -> str:
        """The end of the server's log, without the refusals of clients while it starts."""
        with contextlib.suppress(OSError):
            lines = self.log_path.read_text(errors="replace").splitlines()
            noise = ("the database system is", "Consistent recovery state", "unexpected postmaster")
            kept = [line for line in lines if not any(n in line for n in noise)]
            return "\n".join(kept[-30:])
        return ""


class PostgresCluster:
    """Servers sharing one temporary root: a primary and any standbys of it."""

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError("no PostgreSQL binaries: neither Debian's nor pgserver's")
        self.bin_dir = bin_dir
        self.user = _run_as_user()
        self.root = Path(tempfile.mkdtemp(prefix="authswitch-pg-"))
        self._own(self.root)
        self.servers: list[PostgresServer] = []
        _subreaper(True)

    def _own(self, path: Path) -> None:
        if self.user is not None:
            os.chown(path, self.user.pw_uid, self.user.pw_gid)

    def _server(self, name: str) -> PostgresServer:
        directory = self.root / name
        directory.mkdir()
        self._own(directory)
        server = PostgresServer(directory, free_port(), self.bin_dir, self.user)
        self.servers.append(server)
        return server

    async def primary(self, **settings: str | int) -> PostgresServer:
        """A new server, initialised, configured for streaming replication, started."""
        server = self._server(f"primary{len(self.servers)}")
        await asyncio.to_thread(
            server.run,
            "initdb", "-D", str(server.data), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        server.configure(
            listen_addresses="127.0.0.1",
            port=server.port,
            unix_socket_directories="",
            wal_level="replica",
            max_wal_senders=8,
            max_replication_slots=8,
            hot_standby="on",
            wal_keep_size="256MB",
            max_connections=100,
            shared_buffers="32MB",
            # The standby's walreceiver takes this name: synchronous_standby_names names it.
            cluster_name=server.directory.name,
            **settings,
        )
        server.start()
        await server.wait_ready()
        return server

    async def standby(
        self, primary: PostgresServer, *, via_port: int | None = None, **settings: str | int
    ) -> PostgresServer:
        """A streaming standby of ``primary`` (``pg_basebackup -R``), started and replaying.
        ``via_port``: the standby streams through this port (a fault proxy) instead."""
        server = self._server(f"standby{len(self.servers)}")
        # In a thread: the stream may pass through a proxy served by this event loop.
        await asyncio.to_thread(
            server.run,
            "pg_basebackup", "-h", "127.0.0.1", "-p", str(via_port or primary.port),
            "-U", "postgres", "-D", str(server.data), "-R", "-X", "stream", "-c", "fast",
            "--no-sync",
        )  # fmt: skip
        server.configure(port=server.port, cluster_name=server.directory.name, **settings)
        server.start()
        await server.wait_ready()
        return server

    def close(self) -> None:
        for server in self.servers:
            with contextlib.suppress(Exception):
                server.stop()
        _subreaper(False)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.asynccontextmanager
async def postgres_cluster() -> AsyncIterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        yield cluster
    finally:
        cluster.close()


async def wait_streaming(primary: PostgresServer, standbys: int = 1, timeout_s: float = 30) -> None:
    """Until ``primary`` has ``standbys`` walsenders streaming."""
    deadline = time.monotonic() + timeout_s
    while (
        await primary.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        < standbys
    ):
        if time.monotonic() > deadline:
            raise AssertionError(f"no streaming standby of {primary.port} in {timeout_s}s")
        await asyncio.sleep(0.05)
