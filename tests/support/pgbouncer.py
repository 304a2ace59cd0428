"""A real pgbouncer (Debian's package ``pgbouncer``) in transaction pooling mode in front of
the test Postgres, the machine's (TCP) or the embedded one (a Unix socket).

Its ini file and user list go to a directory of their own. pgbouncer refuses to run as root,
so under root it runs as ``-u <user>``: the owner of the Postgres socket directory (who can
connect to it), or ``nobody`` for a TCP Postgres; its directory is that user's.

Without pgbouncer the tests that need it skip, with the reason, unless
``AUTHSWITCH_TEST_REQUIRE_ENGINES=1`` (CI sets it): then they fail.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.support.server import free_port

REQUIRE_ENGINES = os.environ.get("AUTHSWITCH_TEST_REQUIRE_ENGINES", "") == "1"
_INSTALL = "apt-get install -y pgbouncer (Debian/Ubuntu)"


def pgbouncer_binary() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    for candidate in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def require_pgbouncer() -> str:
    """The pgbouncer binary; skips the test without one (fails when engines are required)."""
    binary = pgbouncer_binary()
    if binary is None:
        reason = f"pgbouncer is not installed: {_INSTALL}"
        if REQUIRE_ENGINES:
            pytest.fail(f"{reason} (AUTHSWITCH_TEST_REQUIRE_ENGINES=1 requires it)")
        pytest.skip(reason)
    return binary


def _postgres_target(dsn: str) -> tuple[str, int, str, str]:
    """(host or socket directory, port, user, database) of a DSN."""
    parts = urlsplit(dsn)
    socket_dir = parse_qs(parts.query).get("host", [""])[0]
    host = socket_dir or parts.hostname or "127.0.0.1"
    return host, parts.port or 5432, parts.username or "postgres", parts.path.lstrip("/")


class Pgbouncer:
    """pgbouncer as a child process, pool_mode = transaction, auth_type = trust, listening on
    127.0.0.1 only. ``pool_size`` server connections per database (the default pool)."""

    def __init__(self, postgres_dsn: str, *, pool_size: int = 3, clients_max: int = 400) -> None:
        self.binary = require_pgbouncer()
        self.host, self.server_port, self.user, self.database = _postgres_target(postgres_dsn)
        self.pool_size = pool_size
        self.clients_max = clients_max
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="authswitch-pgbouncer-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.database}"

    @property
    def log_path(self) -> Path:
        return self.directory / "pgbouncer.log"

    def _run_as(self) -> str | None:
        if os.geteuid() != 0:
            return None
        if self.host.startswith("/"):
            owner = pwd.getpwuid(os.stat(self.host).st_uid).pw_name
            if owner != "root":
                return owner
        return "nobody"

    def _write_config(self) -> Path:
        (self.directory / "userlist.txt").write_text(f'"{self.user}" ""\n')
        ini = self.directory / "pgbouncer.ini"
        ini.write_text(
            f"""[databases]
{self.database} = host={self.host} port={self.server_port} dbname={self.database} user={self.user}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.directory}/userlist.txt
pool_mode = transaction
default_pool_size = {self.pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = {self.clients_max}
max_db_connections = {self.pool_size}
server_lifetime = 3600
query_wait_timeout = 60
logfile = {self.log_path}
pidfile = {self.directory}/pgbouncer.pid
"""
        )
        return ini

    def start(self, timeout_s: float = 15.0) -> None:
        ini = self._write_config()
        user = self._run_as()
        args = [self.binary, str(ini)]
        if user is not None:
            entry = pwd.getpwnam(user)
            for path in (self.directory, *self.directory.iterdir()):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            args[1:1] = ["-u", user]
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout_s
        while not self._answers():
            if self.process.poll() is not None:
                raise AssertionError(f"pgbouncer exited {self.process.returncode}: {self.log()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"pgbouncer not listening in {timeout_s}s: {self.log()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        shutil.rmtree(self.directory, ignore_errors=True)

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""


@contextlib.contextmanager
def running_pgbouncer(postgres_dsn: str, **options: int) -> Iterator[Pgbouncer]:
    bouncer = Pgbouncer(postgres_dsn, **options)
    bouncer.start()
    try:
        yield bouncer
    finally:
        bouncer.stop()
